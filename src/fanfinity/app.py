"""Kept for users and deployments that name `fanfinity.app:create_app`; the factory lives in
`fanfinity.api.app`."""

from fanfinity.api.app import create_app

__all__ = ["create_app"]

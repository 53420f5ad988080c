"""Where data lives: the engine choice (MongoDB or embedded), repositories, Beanie models and the
change feeds the aggregator follows."""

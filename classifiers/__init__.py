"""classifiers: 3D classifiers, training and metrics (a stand-in for a user's own training loop).

It never imports ``synthaug``."""

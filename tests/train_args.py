"""Command-line prefix of the trainer's tests: the toy task config (the default is the demo)."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = ["--config", os.path.join(REPO, "configs", "toy.yaml")]

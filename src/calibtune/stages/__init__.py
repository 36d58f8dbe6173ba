"""The study's cached stages: answers, features and cells (see ``calibtune.stages.base`` for what a stage is)."""

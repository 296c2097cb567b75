"""Seed plans for a study: per-unit sensitivity measured once per search space (`sensitivity`) and the
budgeted allocation that turns it into one plan per cost budget (`allocation`); `seed_plans` gives a fresh
study both."""

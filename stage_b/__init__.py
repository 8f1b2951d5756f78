"""Stage B: outcome table, policy training, evaluation and Pareto curves."""

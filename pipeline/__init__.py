"""The command line, dataset manifest builders, studies, leaderboards, plots and the demo."""

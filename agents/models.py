"""AI models, grants, the ledger, runs and artifacts arrive with the AI-replies issue."""

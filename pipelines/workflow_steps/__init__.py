"""The workflow's machinery (step runner with skip/resume, champion promotion) and its steps."""

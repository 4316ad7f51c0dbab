"""Training data ingestion: which samples each loader part reads (`plan`), the part's mixed,
verified sample stream (`stream`), batches prepared in DataLoader worker processes with a
resumable position (`loader`), and fixed-order reading for validation (`sequential`)."""

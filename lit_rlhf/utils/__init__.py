"""Small helpers with no home of their own: ``io`` (atomic file writes)."""

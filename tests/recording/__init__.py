"""Records, the recorder, the journal and every store."""

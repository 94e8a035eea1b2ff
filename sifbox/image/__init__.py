"""Images on disk: opening, locking and atomically writing image files."""

"""Small shared helpers: errors, logging, file I/O."""

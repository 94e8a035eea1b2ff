"""Pure byte formats: no syscalls beyond reading and writing file objects."""

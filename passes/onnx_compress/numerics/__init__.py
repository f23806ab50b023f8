"""Number formats, pure numpy: the single definition used by passes, reference ops and tests."""

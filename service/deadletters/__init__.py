"""The dead-letter side: reading dead messages, storing them with why they died, re-publishing."""

"""The HTTP facade over the Temporal client. It never mutates run state itself."""

//! Assembles the backend call path from configuration, in one place.

//! Network namespace helpers (filled in by the CNI work).

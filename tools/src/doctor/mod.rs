//! doctor (in progress).

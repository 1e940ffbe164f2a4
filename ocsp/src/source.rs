//! (being written by the responder work)

//! Python bindings of vmbackup (see issue 4).

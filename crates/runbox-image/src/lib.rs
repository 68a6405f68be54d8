//! runbox-image (being written).

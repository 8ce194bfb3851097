//! Hostile peers (being written).

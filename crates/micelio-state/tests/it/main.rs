//! Integration tests of micelio-state's core.

mod merge;
mod service;
mod sim;
mod vectors;

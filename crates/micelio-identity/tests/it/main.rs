//! Integration tests of micelio-identity: known answers from the reference
//! implementation, and the on-disk key files.

mod files;
mod vectors;

//! Integration tests of micelio-wire: the reference implementation's known
//! answers, and property tests of the codecs.

mod properties;
mod vectors;

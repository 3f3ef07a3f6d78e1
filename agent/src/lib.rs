//! tally agent

//! Command-line and `-o` option parsing.

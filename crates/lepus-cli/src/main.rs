//! The `lepus` command-line tool (in progress).

fn main() {}

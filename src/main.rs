//! The `memtune` command line: a thin layer over the library.

fn main() {
    println!("memtune: under construction");
}

fn main() {
    std::process::exit(autoif::cli::main());
}

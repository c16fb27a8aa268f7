fn main() {
    // candle runs large elementwise ops on a thread pool of its own whose idle workers
    // spin before they sleep. Beside rayon's pool, which runs the matrix products and this
    // crate's kernels, that puts more busy threads than cores on the CPU, and LoRA SFT ran
    // about 2× slower on 2 loaded cores. One thread for candle's pool unless the user
    // chooses; set here, before any thread exists.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    std::process::exit(autoif::cli::main());
}

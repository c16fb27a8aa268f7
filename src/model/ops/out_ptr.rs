//! An output buffer that parallel tasks write to in disjoint parts (the row-tiled
//! products of `quant` and `exact_product`), without a lock or a copy per task.

#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);

// Safety: every user writes only its own (row, column) set of the buffer, and the buffer
// outlives the parallel loop that writes it.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method rather than field access, so closures capture the `Sync` wrapper.
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

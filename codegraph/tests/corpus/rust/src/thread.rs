pub struct Handle;

impl Handle {
    pub fn reset(&self) {}
}

pub fn sleep(ms: u64) {
    let h: Handle = Handle;
    h.reset();
    crate::util::helper();
    let _ = ms;
}

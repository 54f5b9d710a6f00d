pub mod thread;
pub mod time;
mod util;

pub use crate::time::sleep;

pub fn run() {
    time::sleep(5);
    thread::sleep(1);
    std::thread::sleep(std::time::Duration::from_millis(1));
    util::helper();
}

use timekit::thread::sleep as thread_sleep;
use timekit::time::{self, Sleep};

#[test]
fn sleeps() {
    let s = time::sleep(3);
    assert!(!s.is_elapsed());
    thread_sleep(1);
    let mut t = Sleep::new(1);
    t.reset(2);
    tokio::time::sleep(std::time::Duration::from_secs(1));
}

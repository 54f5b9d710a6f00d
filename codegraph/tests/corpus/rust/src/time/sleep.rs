use super::now;
use crate::util::helper as assist;

pub struct Sleep {
    deadline: u64,
}

impl Sleep {
    pub fn new(d: u64) -> Sleep {
        Sleep { deadline: now() + d }
    }

    pub fn reset(&mut self, d: u64) {
        self.deadline = d;
        assist();
    }

    pub fn is_elapsed(&self) -> bool {
        self.deadline <= now()
    }
}

pub fn sleep(d: u64) -> Sleep {
    let mut s = Sleep::new(d);
    s.reset(d);
    s
}

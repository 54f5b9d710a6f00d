pub trait Clock {
    fn tick(&self) -> u64;

    fn twice(&self) -> u64 {
        self.tick() * 2
    }
}

pub struct Wall;

impl Clock for Wall {
    fn tick(&self) -> u64 {
        1
    }
}

pub fn helper() -> u64 {
    let w = Wall;
    let v: Wall = Wall;
    v.twice() + v.tick() + w.tick()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_counts() {
        assert_eq!(helper(), 4);
    }
}

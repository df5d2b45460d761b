pub fn _x() {}

pub mod load;

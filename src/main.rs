fn main() {
    println!("labtest");
}

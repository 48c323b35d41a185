//! Closed vocabularies that files and command lines write as words (fault names, scenario step
//! kinds, wait conditions...). Each is an enum whose variants and words are written once, in
//! [`words!`]: a new word is a new variant that every `match` on the enum must handle, never a
//! word that falls through to another one's arm.

/// Defines a fieldless enum whose variants each stand for one word, with `ALL` (in the order
/// written), `name()` (a `const fn`, so tables can be built from it), `names()` and
/// `from_name()`.
///
/// # Usage
/// ```
/// harness::words! {
///     /// How a light is.
///     pub enum Light { On = "on", Off = "off" }
/// }
/// assert_eq!(Light::On.name(), "on");
/// assert_eq!(Light::from_name("off"), Some(Light::Off));
/// assert_eq!(Light::from_name("dim"), None);
/// assert_eq!(Light::ALL, &[Light::On, Light::Off]);
/// assert_eq!(Light::names(), ["on", "off"]);
/// ```
#[macro_export]
macro_rules! words {
    (
        $(#[$meta:meta])*
        $vis:vis enum $enum:ident {
            $($(#[$variant_meta:meta])* $variant:ident = $word:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $enum {
            $(
                // A variant is documented by its word, what every file and command line writes.
                #[doc = concat!("`", $word, "`")]
                $(#[$variant_meta])*
                $variant
            ),+
        }

        impl $enum {
            /// Every variant, in the order written.
            pub const ALL: &'static [$enum] = &[$($enum::$variant),+];

            /// The word files and command lines write.
            pub const fn name(self) -> &'static str {
                match self {
                    $($enum::$variant => $word),+
                }
            }

            /// Every word, in the order written: what a message lists when a word is not one.
            pub fn names() -> Vec<&'static str> {
                Self::ALL.iter().map(|v| v.name()).collect()
            }

            /// The variant `word` stands for, if any.
            pub fn from_name(word: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.name() == word)
            }
        }
    };
}

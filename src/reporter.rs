//! Progress for people: the builder's, packager's and signer's `Reporter`s drawn with
//! indicatif on stderr (hidden with `--no-progress`, `-v`, or when stderr is no terminal).

//! The images a run returns, checked on the host, where user code cannot
//! reach: the agent and `display()` bound them too, but code can write
//! straight into the images directory, so what reaches the client is only
//! what [`check`] rebuilt here.
//!
//! Owns what a returned image must be: a PNG read strictly (every chunk
//! whole and its checksum right; a valid header within the pixel bound;
//! the image data one zlib stream that inflates to exactly the rows its
//! header says, each with a valid filter, and nothing after), rebuilt from
//! its critical chunks alone (IHDR, a palette, a valid tRNS, IDAT, IEND), so
//! every ancillary chunk (text, colour profiles, an animation's frames) is
//! dropped without ever being inflated. A header's size bounds the
//! inflating: memory is a fixed buffer, work at most the header's pixels.
//! Why an image fails is [`Rejected`], worded for a note. Pure: no I/O, and
//! nothing of runs or the protocol.

use bytes::Bytes;

const SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";
/// What the image data is inflated into, a piece at a time.
const INFLATE_BUFFER: usize = 32 * 1024;

/// A PNG fit to send: rebuilt, and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Png {
    pub data: Bytes,
    pub width: u32,
    pub height: u32,
}

/// Why an image is not sent; the text completes "image N dropped: …".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("it is not a PNG (no PNG signature)")]
    NotPng,
    #[error("it is cut short (a chunk runs past the end of the file)")]
    Truncated,
    #[error("it has a chunk whose name is not four letters")]
    BadChunkName,
    #[error("its {0} chunk fails its checksum")]
    BadChecksum(String),
    #[error("it does not start with an IHDR header")]
    NoHeader,
    #[error("its IHDR header is invalid ({0})")]
    BadHeader(&'static str),
    #[error("it is {width}x{height} pixels, over {max} on a side (MCP_BRIDGE_MAX_IMAGE_PIXELS)")]
    TooLarge { width: u32, height: u32, max: u32 },
    #[error("its {0} chunk is out of place or invalid")]
    Misplaced(String),
    #[error("it has a critical chunk this server does not know ({0})")]
    UnknownCritical(String),
    #[error("it is palette-based but has no PLTE palette")]
    NoPalette,
    #[error("it has no IDAT image data")]
    NoImageData,
    #[error("it has no IEND end (cut short)")]
    NoEnd,
    #[error("it has bytes after its IEND end")]
    AfterEnd,
    #[error("its image data does not inflate ({0})")]
    Inflate(String),
    #[error("its image data is longer than its header's {0}x{1} pixels")]
    TooMuchData(u32, u32),
    #[error("its image data is shorter than its header's {0}x{1} pixels")]
    TooLittleData(u32, u32),
    #[error("its image data has a row with an invalid filter type")]
    BadFilter,
}

/// The PNG to send for `data`, rebuilt from its critical chunks, or why
/// there is none. `max_pixels` bounds each side (`MCP_BRIDGE_MAX_IMAGE_PIXELS`).
pub fn check(data: &Bytes, max_pixels: u32) -> Result<Png, Rejected> {
    let rest = data.strip_prefix(SIGNATURE).ok_or(Rejected::NotPng)?;
    let chunks = chunks(rest)?;
    let (header, header_chunk) = match chunks.first() {
        Some(chunk) if chunk.name == *b"IHDR" => (Header::parse(chunk.data)?, chunk.raw),
        _ => return Err(Rejected::NoHeader),
    };
    if header.width.max(header.height) > max_pixels {
        return Err(Rejected::TooLarge {
            width: header.width,
            height: header.height,
            max: max_pixels,
        });
    }
    let kept = Kept::select(&header, &chunks[1..])?;
    inflate_exactly(&header, &kept.image_data)?;
    let mut png = Vec::with_capacity(data.len());
    png.extend_from_slice(SIGNATURE);
    png.extend_from_slice(header_chunk);
    for raw in kept.palette.iter().chain(&kept.transparency) {
        png.extend_from_slice(raw);
    }
    for chunk in &kept.image_data {
        png.extend_from_slice(chunk.raw);
    }
    png.extend_from_slice(kept.end);
    // Nothing was dropped: the bytes are shared, not copied.
    let data = if png.len() == data.len() {
        data.clone()
    } else {
        Bytes::from(png)
    };
    Ok(Png {
        data,
        width: header.width,
        height: header.height,
    })
}

/// One chunk: its name, its data, and all of it (length to checksum).
#[derive(Debug, Clone, Copy)]
struct Chunk<'a> {
    name: [u8; 4],
    data: &'a [u8],
    raw: &'a [u8],
}

impl Chunk<'_> {
    fn name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// Critical chunks are named with a capital first letter.
    fn is_critical(&self) -> bool {
        self.name[0].is_ascii_uppercase()
    }
}

/// Every chunk up to and including IEND, each whole and its checksum right.
fn chunks(mut rest: &[u8]) -> Result<Vec<Chunk<'_>>, Rejected> {
    let mut chunks = Vec::new();
    loop {
        if rest.is_empty() {
            return Err(Rejected::NoEnd);
        }
        let length = read_u32(rest, 0).ok_or(Rejected::Truncated)? as usize;
        let total = length.checked_add(12).ok_or(Rejected::Truncated)?;
        let raw = rest.get(..total).ok_or(Rejected::Truncated)?;
        let name: [u8; 4] = raw[4..8].try_into().unwrap_or_default();
        if !name.iter().all(u8::is_ascii_alphabetic) {
            return Err(Rejected::BadChunkName);
        }
        let chunk = Chunk {
            name,
            data: &raw[8..8 + length],
            raw,
        };
        if crc32fast::hash(&raw[4..8 + length]) != read_u32(raw, 8 + length).unwrap_or_default() {
            return Err(Rejected::BadChecksum(chunk.name()));
        }
        chunks.push(chunk);
        rest = &rest[total..];
        if name == *b"IEND" {
            return if rest.is_empty() {
                Ok(chunks)
            } else {
                Err(Rejected::AfterEnd)
            };
        }
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let word = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(word.try_into().ok()?))
}

/// What IHDR says.
#[derive(Debug, Clone, Copy)]
struct Header {
    width: u32,
    height: u32,
    color_type: u8,
    bit_depth: u8,
    interlaced: bool,
}

impl Header {
    fn parse(data: &[u8]) -> Result<Self, Rejected> {
        let [
            w0,
            w1,
            w2,
            w3,
            h0,
            h1,
            h2,
            h3,
            bit_depth,
            color_type,
            compression,
            filter,
            interlace,
        ] = *data
        else {
            return Err(Rejected::BadHeader("not 13 bytes"));
        };
        let width = u32::from_be_bytes([w0, w1, w2, w3]);
        let height = u32::from_be_bytes([h0, h1, h2, h3]);
        if width == 0 || height == 0 || width > i32::MAX as u32 || height > i32::MAX as u32 {
            return Err(Rejected::BadHeader("a side of 0 or over 2^31-1 pixels"));
        }
        let depths: &[u8] = match color_type {
            0 => &[1, 2, 4, 8, 16],
            3 => &[1, 2, 4, 8],
            2 | 4 | 6 => &[8, 16],
            _ => return Err(Rejected::BadHeader("an unknown colour type")),
        };
        if !depths.contains(&bit_depth) {
            return Err(Rejected::BadHeader(
                "a bit depth its colour type does not allow",
            ));
        }
        if compression != 0 || filter != 0 || interlace > 1 {
            return Err(Rejected::BadHeader(
                "an unknown compression, filter or interlace method",
            ));
        }
        Ok(Self {
            width,
            height,
            color_type,
            bit_depth,
            interlaced: interlace == 1,
        })
    }

    fn bits_per_pixel(&self) -> u64 {
        let channels = match self.color_type {
            2 => 3,
            4 => 2,
            6 => 4,
            _ => 1,
        };
        channels * u64::from(self.bit_depth)
    }

    /// The image data's rows: for each pass (one, or Adam7's seven), the
    /// bytes of a row (its filter byte included) and how many rows.
    fn passes(&self) -> Vec<(u64, u64)> {
        const ADAM7: [(u64, u64, u64, u64); 7] = [
            (0, 0, 8, 8),
            (4, 0, 8, 8),
            (0, 4, 4, 8),
            (2, 0, 4, 4),
            (0, 2, 2, 4),
            (1, 0, 2, 2),
            (0, 1, 1, 2),
        ];
        let (width, height) = (u64::from(self.width), u64::from(self.height));
        let grid: &[(u64, u64, u64, u64)] = if self.interlaced {
            &ADAM7
        } else {
            &[(0, 0, 1, 1)]
        };
        grid.iter()
            .map(|&(x, y, dx, dy)| {
                let columns = width.saturating_sub(x).div_ceil(dx);
                let rows = height.saturating_sub(y).div_ceil(dy);
                (1 + (columns * self.bits_per_pixel()).div_ceil(8), rows)
            })
            // An empty pass has no rows, not even filter bytes.
            .filter(|&(row, rows)| row > 1 && rows > 0)
            .collect()
    }
}

/// The chunks after IHDR that the rebuilt PNG keeps.
struct Kept<'a> {
    palette: Option<&'a [u8]>,
    transparency: Option<&'a [u8]>,
    image_data: Vec<Chunk<'a>>,
    end: &'a [u8],
}

impl<'a> Kept<'a> {
    /// Critical chunks in their place, a tRNS that fits; every other
    /// ancillary chunk is left out.
    fn select(header: &Header, chunks: &[Chunk<'a>]) -> Result<Self, Rejected> {
        let mut kept = Kept {
            palette: None,
            transparency: None,
            image_data: Vec::new(),
            end: &[],
        };
        let mut image_data_ended = false;
        for chunk in chunks {
            let misplaced = || Rejected::Misplaced(chunk.name());
            match &chunk.name {
                b"IDAT" if image_data_ended => return Err(misplaced()),
                b"IDAT" => kept.image_data.push(*chunk),
                b"IEND" => kept.end = chunk.raw,
                b"PLTE" => {
                    let entries = chunk.data.len() / 3;
                    if kept.palette.is_some()
                        || !kept.image_data.is_empty()
                        || matches!(header.color_type, 0 | 4)
                        || chunk.data.len() % 3 != 0
                        || !(1..=256).contains(&entries)
                        || (header.color_type == 3 && entries > 1 << header.bit_depth)
                    {
                        return Err(misplaced());
                    }
                    // A truecolour image's palette is only a suggestion: left out.
                    if header.color_type == 3 {
                        kept.palette = Some(chunk.raw);
                    }
                }
                b"tRNS" => {
                    let fits = match header.color_type {
                        0 => chunk.data.len() == 2,
                        2 => chunk.data.len() == 6,
                        3 => kept
                            .palette
                            .is_some_and(|palette| chunk.data.len() <= (palette.len() - 12) / 3),
                        _ => false,
                    };
                    if fits && kept.image_data.is_empty() && kept.transparency.is_none() {
                        kept.transparency = Some(chunk.raw);
                    }
                }
                _ if chunk.is_critical() => return Err(Rejected::UnknownCritical(chunk.name())),
                _ => {}
            }
            image_data_ended |= !kept.image_data.is_empty() && chunk.name != *b"IDAT";
        }
        if header.color_type == 3 && kept.palette.is_none() {
            return Err(Rejected::NoPalette);
        }
        if kept.image_data.is_empty() {
            return Err(Rejected::NoImageData);
        }
        Ok(kept)
    }
}

/// Inflates the image data into a fixed buffer, a piece at a time: one
/// zlib stream (its checksum right) of exactly the header's rows, each
/// starting with a valid filter type, and no byte after it. What would go
/// past the rows stops the inflating there.
fn inflate_exactly(header: &Header, image_data: &[Chunk<'_>]) -> Result<(), Rejected> {
    let too_much = || Rejected::TooMuchData(header.width, header.height);
    let mut rows = Rows::new(header.passes());
    let mut inflater = flate2::Decompress::new(true);
    let mut buffer = vec![0; INFLATE_BUFFER];
    let mut ended = false;
    for chunk in image_data {
        let mut input = chunk.data;
        while !input.is_empty() || !ended {
            if ended {
                return Err(too_much());
            }
            let (read, written) = (inflater.total_in(), inflater.total_out());
            let status = inflater
                .decompress(input, &mut buffer, flate2::FlushDecompress::None)
                .map_err(|error| Rejected::Inflate(error.to_string()))?;
            let consumed = usize::try_from(inflater.total_in() - read).unwrap_or(usize::MAX);
            let produced = usize::try_from(inflater.total_out() - written).unwrap_or(usize::MAX);
            rows.feed(&buffer[..produced]).map_err(|overflow| {
                if overflow {
                    too_much()
                } else {
                    Rejected::BadFilter
                }
            })?;
            input = &input[consumed..];
            ended = status == flate2::Status::StreamEnd;
            if consumed == 0 && produced == 0 && !ended {
                break; // the rest of the stream is in the next chunk
            }
        }
    }
    if !ended {
        return Err(if rows.done() {
            Rejected::Inflate("the zlib stream does not end".into())
        } else {
            Rejected::TooLittleData(header.width, header.height)
        });
    }
    if !rows.done() {
        return Err(Rejected::TooLittleData(header.width, header.height));
    }
    Ok(())
}

/// Where the inflated bytes are among the rows.
struct Rows {
    /// The passes left: (bytes of a row, rows), the current one last.
    passes: Vec<(u64, u64)>,
    /// Bytes of the current row already seen.
    at: u64,
}

impl Rows {
    fn new(mut passes: Vec<(u64, u64)>) -> Self {
        passes.reverse();
        Self { passes, at: 0 }
    }

    /// Takes inflated bytes: `Err(true)` past the last row, `Err(false)` at
    /// a row whose filter type is not 0 to 4.
    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), bool> {
        while let Some(&first) = bytes.first() {
            let Some((row, rows)) = self.passes.last_mut() else {
                return Err(true);
            };
            if self.at == 0 && first > 4 {
                return Err(false);
            }
            let take = (*row - self.at).min(bytes.len() as u64);
            self.at += take;
            bytes = &bytes[usize::try_from(take).unwrap_or(bytes.len())..];
            if self.at == *row {
                self.at = 0;
                *rows -= 1;
                if *rows == 0 {
                    self.passes.pop();
                }
            }
        }
        Ok(())
    }

    fn done(&self) -> bool {
        self.passes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn chunk(name: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut raw = u32::try_from(data.len()).unwrap().to_be_bytes().to_vec();
        raw.extend_from_slice(name);
        raw.extend_from_slice(data);
        raw.extend_from_slice(&crc32fast::hash(&raw[4..]).to_be_bytes());
        raw
    }

    /// A zlib stream of `n` zero bytes, made a piece at a time.
    fn zeros(n: usize) -> Vec<u8> {
        let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        let piece = vec![0; 1 << 20];
        let mut left = n;
        while left > 0 {
            let take = left.min(piece.len());
            encoder.write_all(&piece[..take]).unwrap();
            left -= take;
        }
        encoder.finish().unwrap()
    }

    fn header(width: u32, height: u32, bit_depth: u8, color_type: u8, interlace: u8) -> Vec<u8> {
        let mut data = width.to_be_bytes().to_vec();
        data.extend_from_slice(&height.to_be_bytes());
        data.extend_from_slice(&[bit_depth, color_type, 0, 0, interlace]);
        chunk(b"IHDR", &data)
    }

    /// An 8-bit grayscale PNG: IHDR, `before`, one IDAT, `after`, IEND.
    fn png(width: u32, height: u32, before: &[Vec<u8>], idat: &[u8], after: &[Vec<u8>]) -> Bytes {
        let mut png = SIGNATURE.to_vec();
        png.extend(header(width, height, 8, 0, 0));
        png.extend(before.concat());
        png.extend(chunk(b"IDAT", idat));
        png.extend(after.concat());
        png.extend(chunk(b"IEND", &[]));
        Bytes::from(png)
    }

    fn gray(width: u32, height: u32) -> Vec<u8> {
        zeros((width as usize + 1) * height as usize)
    }

    fn has(png: &Png, name: &[u8; 4]) -> bool {
        png.data.windows(4).any(|w| w == name)
    }

    #[test]
    fn a_plain_png_is_sent_as_it_is() {
        let plain = png(64, 48, &[], &gray(64, 48), &[]);
        let checked = check(&plain, 1024).unwrap();
        assert_eq!((checked.width, checked.height), (64, 48));
        assert_eq!(checked.data, plain);
        assert_eq!(checked.data.as_ptr(), plain.as_ptr(), "shared, not copied");
    }

    #[test]
    fn compressed_text_and_colour_profile_bombs_are_dropped_uninflated() {
        let bomb = zeros(32 << 20);
        assert!(bomb.len() < 64 << 10, "{}", bomb.len());
        for name in [b"zTXt", b"iCCP", b"iTXt"] {
            let mut data = b"Comment\0\0".to_vec();
            data.extend_from_slice(&bomb);
            let image = png(64, 64, &[chunk(name, &data)], &gray(64, 64), &[]);
            let checked = check(&image, 1024).unwrap();
            assert!(!has(&checked, name));
            assert!(checked.data.len() < 1000, "{}", checked.data.len());
            assert_eq!(check(&checked.data, 1024).unwrap().data, checked.data);
        }
    }

    #[test]
    fn an_animation_comes_back_as_its_still_image() {
        let control = |seq: u32| {
            let mut data = seq.to_be_bytes().to_vec();
            for word in [64u32, 64, 0, 0] {
                data.extend_from_slice(&word.to_be_bytes());
            }
            data.extend_from_slice(&[0, 1, 0, 10, 0, 0]);
            chunk(b"fcTL", &data)
        };
        let mut frames = Vec::new();
        for i in 1..200u32 {
            frames.push(control(2 * i - 1));
            let mut data = (2 * i).to_be_bytes().to_vec();
            data.extend_from_slice(&gray(64, 64));
            frames.push(chunk(b"fdAT", &data));
        }
        let mut animation = [200u32, 0].map(u32::to_be_bytes).concat();
        animation = chunk(b"acTL", &animation);
        let image = png(64, 64, &[animation, control(0)], &gray(64, 64), &frames);
        let checked = check(&image, 1024).unwrap();
        for name in [b"acTL", b"fcTL", b"fdAT"] {
            assert!(!has(&checked, name));
        }
        assert_eq!(checked.data, png(64, 64, &[], &gray(64, 64), &[]));
    }

    #[test]
    fn a_header_that_lies_about_the_data_is_refused() {
        let short = png(800, 600, &[], &gray(10, 10), &[]);
        assert_eq!(check(&short, 1024), Err(Rejected::TooLittleData(800, 600)));
        // A valid image followed by 16 MiB more: the inflating stops at the rows.
        let long = png(64, 64, &[], &zeros(16 << 20), &[]);
        assert_eq!(check(&long, 1024), Err(Rejected::TooMuchData(64, 64)));
        let huge = png(100_000, 100_000, &[], &gray(1, 1), &[]);
        assert_eq!(
            check(&huge, 1024),
            Err(Rejected::TooLarge {
                width: 100_000,
                height: 100_000,
                max: 1024
            })
        );
        assert!(
            Rejected::TooLarge {
                width: 2,
                height: 3,
                max: 1
            }
            .to_string()
            .contains("MCP_BRIDGE_MAX_IMAGE_PIXELS")
        );
    }

    #[test]
    fn truncated_damaged_or_other_files_are_refused() {
        let plain = png(64, 64, &[], &gray(64, 64), &[]);
        assert_eq!(
            check(&plain.slice(..plain.len() - 30), 1024),
            Err(Rejected::Truncated)
        );
        assert_eq!(
            check(&plain.slice(..plain.len() - 12), 1024),
            Err(Rejected::NoEnd)
        );
        let mut damaged = plain.to_vec();
        damaged[45] ^= 1;
        assert_eq!(
            check(&Bytes::from(damaged), 1024),
            Err(Rejected::BadChecksum("IDAT".into()))
        );
        let mut after = plain.to_vec();
        after.extend_from_slice(b"trailer");
        assert_eq!(check(&Bytes::from(after), 1024), Err(Rejected::AfterEnd));
        for other in [&b"GIF89a......"[..], b"", b"\x89PNG\r\n\x1a"] {
            assert_eq!(
                check(&Bytes::copy_from_slice(other), 1024),
                Err(Rejected::NotPng)
            );
        }
        let garbage = png(64, 64, &[], b"not zlib at all", &[]);
        assert!(matches!(check(&garbage, 1024), Err(Rejected::Inflate(_))));
        let mut rows = vec![0u8; 65 * 64];
        rows[65 * 3] = 9;
        let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&rows).unwrap();
        let filter = png(64, 64, &[], &encoder.finish().unwrap(), &[]);
        assert_eq!(check(&filter, 1024), Err(Rejected::BadFilter));
        let unknown = png(64, 64, &[chunk(b"ABCD", b"")], &gray(64, 64), &[]);
        assert_eq!(
            check(&unknown, 1024),
            Err(Rejected::UnknownCritical("ABCD".into()))
        );
        let mut no_header = SIGNATURE.to_vec();
        no_header.extend(chunk(b"IEND", &[]));
        assert_eq!(
            check(&Bytes::from(no_header), 1024),
            Err(Rejected::NoHeader)
        );
    }

    #[test]
    fn image_data_split_over_chunks_palettes_and_interlacing_are_read() {
        // Adam7, 2-bit palette, tRNS kept; the stream split into 3-byte IDATs.
        let (width, height) = (33u32, 17u32);
        let passes = Header {
            width,
            height,
            color_type: 3,
            bit_depth: 2,
            interlaced: true,
        }
        .passes();
        let size: u64 = passes.iter().map(|(row, rows)| row * rows).sum();
        let data = zeros(usize::try_from(size).unwrap());
        let mut image = SIGNATURE.to_vec();
        image.extend(header(width, height, 2, 3, 1));
        image.extend(chunk(b"PLTE", &[0, 0, 0, 255, 255, 255]));
        image.extend(chunk(b"tRNS", &[0]));
        image.extend(chunk(b"tEXt", b"Software\0test"));
        for piece in data.chunks(3) {
            image.extend(chunk(b"IDAT", piece));
        }
        image.extend(chunk(b"IEND", &[]));
        let checked = check(&Bytes::from(image.clone()), 1024).unwrap();
        assert!(has(&checked, b"PLTE") && has(&checked, b"tRNS") && !has(&checked, b"tEXt"));
        assert_eq!(
            checked.data.len(),
            image.len() - chunk(b"tEXt", b"Software\0test").len()
        );
        // Without its palette, a palette image is nothing.
        let mut bare = SIGNATURE.to_vec();
        bare.extend(header(width, height, 2, 3, 1));
        bare.extend(chunk(b"IDAT", &data));
        bare.extend(chunk(b"IEND", &[]));
        assert_eq!(check(&Bytes::from(bare), 1024), Err(Rejected::NoPalette));
    }

    /// Recomputes the checksum of every chunk that fits.
    fn fix_checksums(data: &mut [u8]) {
        let mut at = SIGNATURE.len();
        while let Some(length) = read_u32(data, at) {
            let end = at + 12 + length as usize;
            if end > data.len() {
                return;
            }
            let crc = crc32fast::hash(&data[at + 4..end - 4]);
            data[end - 4..end].copy_from_slice(&crc.to_be_bytes());
            at = end;
        }
    }

    #[test]
    fn mutated_pngs_never_panic_and_what_passes_checks_again() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut palette = SIGNATURE.to_vec();
        palette.extend(header(20, 20, 4, 3, 1));
        palette.extend(chunk(b"PLTE", &[1; 48]));
        palette.extend(chunk(b"tRNS", &[0; 16]));
        let rows = Header::parse(&palette[16..29]).unwrap().passes();
        let size: u64 = rows.iter().map(|(row, rows)| row * rows).sum();
        palette.extend(chunk(b"IDAT", &zeros(usize::try_from(size).unwrap())));
        palette.extend(chunk(b"IEND", &[]));
        let bases = [
            png(30, 20, &[chunk(b"tEXt", b"a\0b")], &gray(30, 20), &[]).to_vec(),
            palette,
        ];
        for base in &bases {
            check(&Bytes::copy_from_slice(base), 64).unwrap();
        }
        let mut passed = 0;
        for round in 0..20_000 {
            let mut data = bases[round % 2].clone();
            for _ in 0..=next() % 4 {
                let at = usize::try_from(next() % data.len() as u64).unwrap();
                let [byte, ..] = next().to_le_bytes();
                match next() % 3 {
                    0 => data[at] = data[at].wrapping_add(byte.max(1)),
                    1 => data.truncate(at),
                    _ => data.insert(at, byte),
                }
                if data.is_empty() {
                    break;
                }
            }
            if round % 4 != 0 {
                fix_checksums(&mut data); // so that the mutation reaches the checks behind them
            }
            if let Ok(png) = check(&Bytes::from(data), 64) {
                passed += 1;
                assert_eq!(
                    check(&png.data, 64).unwrap(),
                    png,
                    "a rebuilt PNG is its own rebuild"
                );
            }
        }
        assert!(
            passed > 100,
            "{passed}: mutations of pixels or dropped chunks still pass"
        );
    }
}

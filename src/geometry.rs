//! Piece, block and file arithmetic: where every byte of a torrent lives.
//!
//! Owns all mapping between the torrent's concatenated byte stream, its
//! pieces, the 16 KiB blocks peers request, and the files on disk. Keeping it
//! in one place means off-by-one errors at the last piece, the last block or a
//! zero-length file are fixed once and tested once.
//!
//! Does not own validation of metainfo (`metainfo` decides what a legal
//! torrent is), hashing, or I/O: `storage` turns `FileSpan`s into reads and
//! writes.

use std::ops::Range;

use crate::types::{Block, PieceIndex};

/// rtc's one block length, for both directions: every request we send asks
/// for this many bytes (a piece's last block may be shorter), and it is the
/// most a peer may ask of us in one `request` (`peer::upload`, through
/// [`Layout::is_valid_block`]) or send in one `piece` (the frame limit
/// `peer::message::MAX_FRAME`). 16 KiB is what every mainstream client
/// requests, and BEP 3 notes that clients close connections asking for
/// more: serving more would let one 17-byte request cost that much disk
/// read and send buffer, and we never ask for more, so a larger `piece`
/// cannot be an answer to us.
pub const BLOCK_LEN: u32 = 16 * 1024;

/// A contiguous run of one piece that lies inside one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileSpan {
    /// Index into the layout's (and the torrent's) file list.
    pub file: usize,
    /// Where the run starts inside that file.
    pub file_offset: u64,
    /// Where the run starts inside the piece.
    pub piece_offset: u32,
    /// Length of the run; never zero.
    pub len: u32,
}

/// One file's place in the concatenated stream. `end = offset + length` is
/// computed once with overflow checks so later code never adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extent {
    offset: u64,
    length: u64,
    end: u64,
}

/// The shape of a torrent's data: piece size and file sizes. Immutable and
/// cheap to clone; built only through `new`, which rejects shapes whose
/// arithmetic could overflow, so no method needs to fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    piece_length: u32,
    total_length: u64,
    piece_count: u32,
    files: Vec<Extent>,
}

impl Layout {
    /// `None` if `piece_length` is 0, the file lengths sum past `u64::MAX`, or
    /// there would be more than `u32::MAX` pieces (the wire protocol indexes
    /// pieces with a u32). Zero-length files and a zero total are allowed.
    pub fn new(piece_length: u32, file_lengths: &[u64]) -> Option<Layout> {
        if piece_length == 0 {
            return None;
        }
        let mut files = Vec::with_capacity(file_lengths.len());
        let mut offset = 0u64;
        for &length in file_lengths {
            let end = offset.checked_add(length)?;
            files.push(Extent {
                offset,
                length,
                end,
            });
            offset = end;
        }
        let piece_count = u32::try_from(offset.div_ceil(u64::from(piece_length))).ok()?;
        Some(Layout {
            piece_length,
            total_length: offset,
            piece_count,
            files,
        })
    }

    pub fn total_length(&self) -> u64 {
        self.total_length
    }

    /// Nominal piece length; every piece but the last has exactly this size.
    pub fn piece_length(&self) -> u32 {
        self.piece_length
    }

    /// `ceil(total / piece_length)`; 0 when the total is 0.
    pub fn piece_count(&self) -> u32 {
        self.piece_count
    }

    /// Length of `piece`: `piece_length` except for a shorter last piece.
    /// 0 for a piece out of range, so callers validating peer input can
    /// treat "no such piece" and "nothing there" alike.
    pub fn piece_len(&self, piece: PieceIndex) -> u32 {
        if piece.0 >= self.piece_count {
            return 0;
        }
        let rest = self.total_length.saturating_sub(self.piece_offset(piece));
        let len = rest.min(u64::from(self.piece_length));
        // `len` is at most `piece_length`, so the conversion cannot fail.
        u32::try_from(len).unwrap_or(self.piece_length)
    }

    /// Byte offset of `piece` in the concatenated stream. Cannot overflow: the
    /// product of two u32 values fits a u64. Meaningful only for pieces in
    /// range; for others it is where that piece would start.
    pub fn piece_offset(&self, piece: PieceIndex) -> u64 {
        u64::from(piece.0) * u64::from(self.piece_length)
    }

    /// Pieces one connection must hold at once to keep `pipeline` blocks
    /// in flight: enough whole pieces, plus one being finished.
    pub fn pieces_for_pipeline(&self, pipeline: usize) -> usize {
        let piece_len = self.piece_length.max(1) as usize;
        (pipeline * BLOCK_LEN as usize).div_ceil(piece_len) + 1
    }

    /// Number of blocks in `piece` (0 for a piece out of range).
    pub fn block_count(&self, piece: PieceIndex) -> u32 {
        self.piece_len(piece).div_ceil(BLOCK_LEN)
    }

    /// The `BLOCK_LEN` blocks of `piece` in order; the last may be shorter.
    /// Empty for a piece out of range.
    #[cfg(test)]
    pub fn blocks(&self, piece: PieceIndex) -> impl Iterator<Item = Block> {
        let len = self.piece_len(piece);
        (0..len)
            .step_by(BLOCK_LEN as usize)
            .map(move |offset| block_at(piece, len, offset))
    }

    /// Block `index` of `piece`, as `blocks` yields it. Past the piece's end
    /// (or for a piece out of range) its length is 0, as `piece_len` is.
    pub fn block(&self, piece: PieceIndex, index: u32) -> Block {
        let offset = index.saturating_mul(BLOCK_LEN);
        block_at(piece, self.piece_len(piece), offset)
    }

    /// Which block of its piece `block` is, if it is exactly one that
    /// `blocks` yields: aligned, inside the piece and of that block's length.
    /// Those are the only blocks we request, so the only ones we accept.
    pub fn block_index(&self, block: &Block) -> Option<u32> {
        let index = block.offset / BLOCK_LEN;
        (block.length > 0
            && block.offset % BLOCK_LEN == 0
            && self.block(block.piece, index) == *block)
            .then_some(index)
    }

    /// Whether a peer's `request` names bytes that exist (an incoming
    /// `piece` is held to more: `peer::conn` accepts only the exact blocks
    /// it asked for). Any offset is accepted, not just multiples of `BLOCK_LEN`:
    /// BEP 3 does not require alignment and some clients do not align. The
    /// length must be non-zero and at most `BLOCK_LEN` (16 KiB), and the
    /// block must end inside the piece.
    pub fn is_valid_block(&self, block: &Block) -> bool {
        block.length > 0
            && block.length <= BLOCK_LEN
            && block
                .offset
                .checked_add(block.length)
                .is_some_and(|end| end <= self.piece_len(block.piece))
    }

    /// Number of files, including zero-length ones.
    #[cfg(test)]
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Byte offset of file `i` in the concatenated stream; 0 if out of range.
    pub fn file_offset(&self, i: usize) -> u64 {
        self.files.get(i).map_or(0, |f| f.offset)
    }

    /// Length of file `i`; 0 if out of range.
    pub fn file_length(&self, i: usize) -> u64 {
        self.files.get(i).map_or(0, |f| f.length)
    }

    /// The runs of `piece`'s bytes, in order, one per file it touches.
    /// Zero-length files never appear. Empty for a piece out of range.
    pub fn spans(&self, piece: PieceIndex) -> Spans<'_> {
        let start = self.piece_offset(piece);
        let len = u64::from(self.piece_len(piece));
        // Files are in stream order, so their ends are non-decreasing and a
        // binary search finds the first file that extends past `start`.
        let first = self.files.partition_point(|f| f.end <= start);
        Spans {
            files: &self.files,
            next: first,
            pos: start,
            piece_start: start,
            // `start + len <= total_length` for pieces in range; for pieces
            // out of range `len` is 0 and the iterator is empty.
            piece_end: start.saturating_add(len),
        }
    }

    /// Pieces holding at least one byte of file `i`, e.g. to report per-file
    /// progress. Empty for zero-length files and indices out of range.
    pub fn pieces_of_file(&self, i: usize) -> Range<u32> {
        let Some(file) = self.files.get(i) else {
            return 0..0;
        };
        if file.length == 0 {
            return 0..0;
        }
        let Some(last_byte) = file.end.checked_sub(1) else {
            return 0..0;
        };
        let per = u64::from(self.piece_length);
        let first = u32::try_from(file.offset / per).ok();
        let end = u32::try_from(last_byte / per)
            .ok()
            .and_then(|last| last.checked_add(1));
        match (first, end) {
            (Some(first), Some(end)) => first..end,
            _ => 0..0,
        }
    }
}

/// The block of a `piece_len`-byte piece starting at `offset`: `BLOCK_LEN`
/// bytes, fewer at the piece's end, none past it.
fn block_at(piece: PieceIndex, piece_len: u32, offset: u32) -> Block {
    Block {
        piece,
        offset,
        length: piece_len.saturating_sub(offset).min(BLOCK_LEN),
    }
}

/// Iterator returned by [`Layout::spans`].
#[derive(Clone, Debug)]
pub struct Spans<'a> {
    files: &'a [Extent],
    next: usize,
    pos: u64,
    piece_start: u64,
    piece_end: u64,
}

impl Iterator for Spans<'_> {
    type Item = FileSpan;

    fn next(&mut self) -> Option<FileSpan> {
        while self.pos < self.piece_end {
            let index = self.next;
            let file = self.files.get(index)?;
            self.next = index.checked_add(1)?;
            // Zero-length files (and any file already behind us) have
            // `end <= pos`: they hold none of this piece.
            if file.end <= self.pos {
                continue;
            }
            let end = file.end.min(self.piece_end);
            let span = FileSpan {
                file: index,
                file_offset: self.pos.checked_sub(file.offset)?,
                piece_offset: u32::try_from(self.pos.checked_sub(self.piece_start)?).ok()?,
                len: u32::try_from(end.checked_sub(self.pos)?).ok()?,
            };
            self.pos = end;
            return Some(span);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(i: u32) -> PieceIndex {
        PieceIndex(i)
    }

    fn spans(layout: &Layout, piece: u32) -> Vec<(usize, u64, u32, u32)> {
        layout
            .spans(p(piece))
            .map(|s| (s.file, s.file_offset, s.piece_offset, s.len))
            .collect()
    }

    #[test]
    fn rejects_impossible_shapes() {
        assert!(Layout::new(0, &[10]).is_none());
        assert!(Layout::new(1, &[u64::MAX, 1]).is_none());
        // 2^32 pieces of one byte would not be addressable on the wire.
        assert!(Layout::new(1, &[1 << 32]).is_none());
        let max = Layout::new(1, &[u64::from(u32::MAX)]).expect("u32::MAX pieces fit");
        assert_eq!(max.piece_count(), u32::MAX);
        assert_eq!(max.piece_len(p(u32::MAX - 1)), 1);
        assert_eq!(max.piece_len(p(u32::MAX)), 0);
        // The largest total with u32::MAX pieces of u32::MAX bytes.
        let total = u64::from(u32::MAX) * u64::from(u32::MAX);
        let huge = Layout::new(u32::MAX, &[total]).expect("fits");
        let last = huge.piece_count() - 1;
        assert_eq!(
            huge.piece_offset(p(last)) + u64::from(huge.piece_len(p(last))),
            total
        );
        assert!(Layout::new(u32::MAX, &[total + 1]).is_none());
    }

    #[test]
    fn last_piece_and_last_block_are_shorter() {
        // 2.5 pieces of 40000 bytes: last piece 20000 = one full block + 3616.
        let layout = Layout::new(40_000, &[100_000]).expect("valid");
        assert_eq!(layout.total_length(), 100_000);
        assert_eq!(layout.piece_length(), 40_000);
        assert_eq!(layout.piece_count(), 3);
        assert_eq!(layout.piece_len(p(0)), 40_000);
        assert_eq!(layout.piece_len(p(2)), 20_000);
        assert_eq!(layout.piece_len(p(3)), 0);
        assert_eq!(layout.piece_offset(p(2)), 80_000);
        assert_eq!(layout.block_count(p(0)), 3);
        assert_eq!(layout.block_count(p(2)), 2);
        assert_eq!(layout.block_count(p(3)), 0);
        let blocks: Vec<(u32, u32)> = layout.blocks(p(0)).map(|b| (b.offset, b.length)).collect();
        assert_eq!(blocks, [(0, 16384), (16384, 16384), (32768, 7232)]);
        let last: Vec<Block> = layout.blocks(p(2)).collect();
        assert_eq!(
            last,
            [
                Block {
                    piece: p(2),
                    offset: 0,
                    length: 16384
                },
                Block {
                    piece: p(2),
                    offset: 16384,
                    length: 3616
                },
            ]
        );
        assert_eq!(layout.blocks(p(3)).count(), 0);
        // One block at a time, and back from a block to its index.
        for piece in 0..4 {
            let all: Vec<Block> = layout.blocks(p(piece)).collect();
            for (i, b) in all.iter().enumerate() {
                assert_eq!(layout.block(p(piece), i as u32), *b);
                assert_eq!(layout.block_index(b), Some(i as u32));
            }
            assert_eq!(layout.block(p(piece), all.len() as u32).length, 0);
        }
        assert_eq!(layout.block(p(0), u32::MAX).length, 0);
    }

    #[test]
    fn only_whole_aligned_blocks_have_an_index() {
        let layout = Layout::new(40_000, &[100_000]).expect("valid");
        let b = |piece, offset, length| Block {
            piece: p(piece),
            offset,
            length,
        };
        assert_eq!(layout.block_index(&b(0, 16_384, 16_384)), Some(1));
        assert_eq!(layout.block_index(&b(0, 32_768, 7_232)), Some(2));
        assert_eq!(layout.block_index(&b(2, 16_384, 3_616)), Some(1));
        // Short, long, misaligned, past the end, empty, no such piece.
        assert_eq!(layout.block_index(&b(0, 0, 16_383)), None);
        assert_eq!(layout.block_index(&b(0, 32_768, 7_233)), None);
        assert_eq!(layout.block_index(&b(2, 16_384, 16_384)), None);
        assert_eq!(layout.block_index(&b(0, 1, 16_384)), None);
        assert_eq!(layout.block_index(&b(0, 49_152, 16_384)), None);
        assert_eq!(layout.block_index(&b(0, 49_152, 0)), None);
        assert_eq!(layout.block_index(&b(0, 0, 0)), None);
        assert_eq!(layout.block_index(&b(3, 0, 16_384)), None);
        assert_eq!(layout.block_index(&b(0, u32::MAX - 16_383, 16_384)), None);
    }

    #[test]
    fn exact_multiple_has_full_last_piece() {
        let layout = Layout::new(32_768, &[65_536]).expect("valid");
        assert_eq!(layout.piece_count(), 2);
        assert_eq!(layout.piece_len(p(1)), 32_768);
        assert_eq!(layout.block_count(p(1)), 2);
        assert!(layout.blocks(p(1)).all(|b| b.length == BLOCK_LEN));
        assert_eq!(spans(&layout, 1), [(0, 32_768, 0, 32_768)]);
    }

    #[test]
    fn total_zero_has_no_pieces() {
        let layout = Layout::new(16_384, &[]).expect("valid");
        assert_eq!(layout.piece_count(), 0);
        assert_eq!(layout.file_count(), 0);
        assert_eq!(layout.piece_len(p(0)), 0);
        assert!(spans(&layout, 0).is_empty());
        let layout = Layout::new(16_384, &[0, 0]).expect("valid");
        assert_eq!(layout.piece_count(), 0);
        assert_eq!(layout.pieces_of_file(1), 0..0);
        assert!(spans(&layout, 0).is_empty());
    }

    #[test]
    fn piece_spans_several_files_skipping_empty_ones() {
        // Files: a=10, (empty), b=3, (empty), c=20, d=7 with 16-byte pieces:
        // piece 0 = a[0..10] b[0..3] c[0..3]; piece 1 = c[3..19];
        // piece 2 = c[19..20] d[0..7] (the short last piece, 8 bytes).
        let layout = Layout::new(16, &[10, 0, 3, 0, 20, 7]).expect("valid");
        assert_eq!(layout.total_length(), 40);
        assert_eq!(layout.piece_count(), 3);
        assert_eq!(
            spans(&layout, 0),
            [(0, 0, 0, 10), (2, 0, 10, 3), (4, 0, 13, 3)]
        );
        assert_eq!(spans(&layout, 1), [(4, 3, 0, 16)]);
        assert_eq!(spans(&layout, 2), [(4, 19, 0, 1), (5, 0, 1, 7)]);
        assert!(spans(&layout, 3).is_empty());
        for piece in 0..layout.piece_count() {
            let total: u32 = layout.spans(p(piece)).map(|s| s.len).sum();
            assert_eq!(total, layout.piece_len(p(piece)));
        }
        assert_eq!(layout.file_count(), 6);
        assert_eq!(layout.file_offset(4), 13);
        assert_eq!(layout.file_length(4), 20);
        assert_eq!(layout.file_offset(3), 13);
        assert_eq!(layout.file_length(3), 0);
        assert_eq!(layout.file_offset(99), 0);
        assert_eq!(layout.file_length(99), 0);
        assert_eq!(layout.pieces_of_file(0), 0..1);
        assert_eq!(layout.pieces_of_file(1), 0..0);
        assert_eq!(layout.pieces_of_file(2), 0..1);
        assert_eq!(layout.pieces_of_file(4), 0..3);
        assert_eq!(layout.pieces_of_file(5), 2..3);
        assert_eq!(layout.pieces_of_file(6), 0..0);
    }

    #[test]
    fn leading_empty_files_and_boundary_aligned_files() {
        let layout = Layout::new(4, &[0, 0, 4, 4]).expect("valid");
        assert_eq!(spans(&layout, 0), [(2, 0, 0, 4)]);
        assert_eq!(spans(&layout, 1), [(3, 0, 0, 4)]);
        assert_eq!(layout.pieces_of_file(2), 0..1);
        assert_eq!(layout.pieces_of_file(3), 1..2);
    }

    #[test]
    fn block_validation() {
        let layout = Layout::new(40_000, &[100_000]).expect("valid");
        let b = |piece, offset, length| Block {
            piece: p(piece),
            offset,
            length,
        };
        assert!(layout.is_valid_block(&b(0, 0, BLOCK_LEN)));
        assert!(layout.is_valid_block(&b(0, 1, 100)));
        assert!(
            !layout.is_valid_block(&b(0, 0, 40_000)),
            "inside the piece but over BLOCK_LEN"
        );
        assert!(layout.is_valid_block(&b(2, 16_384, 3_616)));
        assert!(!layout.is_valid_block(&b(2, 16_384, 3_617)));
        assert!(!layout.is_valid_block(&b(0, 0, 0)));
        assert!(!layout.is_valid_block(&b(3, 0, 1)));
        assert!(!layout.is_valid_block(&b(0, u32::MAX, 2)));
        let big = Layout::new(1 << 20, &[1 << 20]).expect("valid");
        assert!(big.is_valid_block(&b(0, 0, BLOCK_LEN)));
        assert!(big.is_valid_block(&b(0, 1, BLOCK_LEN)), "unaligned");
        assert!(!big.is_valid_block(&b(0, 0, BLOCK_LEN + 1)));
        assert!(!big.is_valid_block(&b(0, 0, 128 * 1024)));
    }
}

//! Work gathered into batches: a lone item goes out at once; items that queue up while
//! earlier batches are in flight go out together when a slot frees.
//!
//! ```text
//!  senders ─► mpsc queue ─► BatchQueue::next_batch ─► [first, queued behind it...]
//!                                 (bounded in items and bytes; an oversized item waits
//!                                  for the next batch, one that goes alone goes alone)
//! ```

use tokio::sync::mpsc;

/// An item of a batch: its encoded size, and whether it must travel alone.
pub trait Batchable {
    /// Encoded bytes, counted against a batch's byte bound.
    fn bytes(&self) -> usize;
    /// True for an item whose answer may be large, which is never batched with others.
    fn goes_alone(&self) -> bool {
        false
    }
}

/// The receiving end of a queue, taken in batches.
pub struct BatchQueue<T> {
    queue: mpsc::Receiver<T>,
    /// An item that did not fit the last batch: it opens the next.
    carried: Option<T>,
}

impl<T: Batchable> BatchQueue<T> {
    pub fn new(queue: mpsc::Receiver<T>) -> Self {
        Self {
            queue,
            carried: None,
        }
    }

    /// Waits for the next item, then takes the items queued behind it, up to `max_items`
    /// and `max_bytes` in all (the first is taken whatever its size). None once every
    /// sender is gone and the queue is empty.
    pub async fn next_batch(&mut self, max_items: usize, max_bytes: usize) -> Option<Vec<T>> {
        let first = match self.carried.take() {
            Some(item) => item,
            None => self.queue.recv().await?,
        };
        let mut bytes = first.bytes();
        let alone = first.goes_alone();
        let mut batch = vec![first];
        while !alone && batch.len() < max_items {
            match self.queue.try_recv() {
                Ok(item) if !item.goes_alone() && bytes + item.bytes() <= max_bytes => {
                    bytes += item.bytes();
                    batch.push(item);
                }
                Ok(item) => {
                    self.carried = Some(item);
                    break;
                }
                Err(_) => break,
            }
        }
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Item {
        bytes: usize,
        alone: bool,
    }

    impl Batchable for Item {
        fn bytes(&self) -> usize {
            self.bytes
        }
        fn goes_alone(&self) -> bool {
            self.alone
        }
    }

    fn item(bytes: usize) -> Item {
        Item {
            bytes,
            alone: false,
        }
    }

    async fn sizes(queue: &mut BatchQueue<Item>, items: usize, bytes: usize) -> Vec<usize> {
        let batch = queue.next_batch(items, bytes).await.unwrap();
        batch.iter().map(|i| i.bytes).collect()
    }

    #[tokio::test]
    async fn batches_are_bounded_in_items_and_bytes_and_keep_the_order() {
        let (send, receive) = mpsc::channel(64);
        let mut queue = BatchQueue::new(receive);
        for bytes in [10, 20, 30, 40, 500, 1, 2, 3] {
            send.send(item(bytes)).await.unwrap();
        }
        assert_eq!(sizes(&mut queue, 3, 1000).await, vec![10, 20, 30]);
        // 40 + 500 is over 100: 500 is carried and opens the next batch, alone or not.
        assert_eq!(sizes(&mut queue, 10, 100).await, vec![40]);
        assert_eq!(sizes(&mut queue, 10, 100).await, vec![500]);
        assert_eq!(sizes(&mut queue, 10, 100).await, vec![1, 2, 3]);
        drop(send);
        assert!(queue.next_batch(10, 100).await.is_none());
    }

    #[tokio::test]
    async fn an_item_that_goes_alone_is_never_batched() {
        let (send, receive) = mpsc::channel(64);
        let mut queue = BatchQueue::new(receive);
        send.send(item(1)).await.unwrap();
        send.send(Item {
            bytes: 2,
            alone: true,
        })
        .await
        .unwrap();
        send.send(item(3)).await.unwrap();
        send.send(item(4)).await.unwrap();
        assert_eq!(sizes(&mut queue, 10, 100).await, vec![1]);
        assert_eq!(sizes(&mut queue, 10, 100).await, vec![2]);
        assert_eq!(sizes(&mut queue, 10, 100).await, vec![3, 4]);
    }
}

/*
 * nfq-delay: delays the packets of one NFQUEUE queue in user space, for the fault suite
 * (the kernel here has no sch_netem). Each packet is held for DELAY_MS plus a uniform
 * jitter in [-JITTER_MS, +JITTER_MS] and then accepted; packets leave in the order their
 * delays end, so jitter also reorders them, as it does on real links. Runs for SECONDS
 * and exits, accepting whatever it still holds.
 *
 *   nfq-delay QUEUE DELAY_MS JITTER_MS SECONDS
 *
 * Run it in the network namespace whose iptables rule sends packets to QUEUE
 * (iptables -A OUTPUT -p udp -j NFQUEUE --queue-num QUEUE --queue-bypass): with
 * --queue-bypass, packets pass undelayed whenever no program listens.
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <linux/netfilter.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

#define HELD_MAX 65536

struct held {
    uint32_t id;
    int64_t due_us;
};

static struct held heap[HELD_MAX];
static size_t heap_len;
static long delay_ms, jitter_ms;

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void heap_push(struct held h) {
    size_t i = heap_len++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (heap[parent].due_us <= h.due_us) break;
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = h;
}

static struct held heap_pop(void) {
    struct held top = heap[0];
    struct held last = heap[--heap_len];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= heap_len) break;
        if (child + 1 < heap_len && heap[child + 1].due_us < heap[child].due_us) child++;
        if (last.due_us <= heap[child].due_us) break;
        heap[i] = heap[child];
        i = child;
    }
    if (heap_len > 0) heap[i] = last;
    return top;
}

static int on_packet(struct nfq_q_handle *queue, struct nfgenmsg *msg, struct nfq_data *data,
                     void *unused) {
    (void)msg;
    (void)unused;
    struct nfqnl_msg_packet_hdr *header = nfq_get_msg_packet_hdr(data);
    if (header == NULL) return 0;
    uint32_t id = ntohl(header->packet_id);
    if (heap_len == HELD_MAX) {
        /* Full: let it through now rather than hold more. */
        return nfq_set_verdict(queue, id, NF_ACCEPT, 0, NULL);
    }
    long jitter = jitter_ms > 0 ? (random() % (2 * jitter_ms + 1)) - jitter_ms : 0;
    long ms = delay_ms + jitter;
    if (ms < 0) ms = 0;
    heap_push((struct held){.id = id, .due_us = now_us() + (int64_t)ms * 1000});
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s QUEUE DELAY_MS JITTER_MS SECONDS\n", argv[0]);
        return 2;
    }
    int queue_num = atoi(argv[1]);
    delay_ms = atol(argv[2]);
    jitter_ms = atol(argv[3]);
    long seconds = atol(argv[4]);
    if (queue_num < 0 || delay_ms < 0 || jitter_ms < 0 || seconds <= 0) {
        fprintf(stderr, "%s: every argument must be a non-negative number (SECONDS > 0)\n",
                argv[0]);
        return 2;
    }
    srandom((unsigned)now_us());
    struct nfq_handle *handle = nfq_open();
    if (handle == NULL) {
        perror("nfq_open");
        return 1;
    }
    struct nfq_q_handle *queue = nfq_create_queue(handle, (uint16_t)queue_num, on_packet, NULL);
    if (queue == NULL) {
        perror("nfq_create_queue");
        return 1;
    }
    if (nfq_set_mode(queue, NFQNL_COPY_META, 0) < 0) {
        perror("nfq_set_mode");
        return 1;
    }
    nfq_set_queue_maxlen(queue, HELD_MAX);
    int fd = nfq_fd(handle);
    char buffer[65536];
    int64_t end_us = now_us() + (int64_t)seconds * 1000000;
    while (now_us() < end_us) {
        int64_t wait_us = heap_len > 0 ? heap[0].due_us - now_us() : 10000;
        if (wait_us < 0) wait_us = 0;
        if (wait_us > 10000) wait_us = 10000;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int ready = poll(&pfd, 1, (int)((wait_us + 999) / 1000));
        if (ready > 0) {
            ssize_t n = recv(fd, buffer, sizeof buffer, MSG_DONTWAIT);
            if (n > 0) nfq_handle_packet(handle, buffer, (int)n);
            else if (n < 0 && errno == ENOBUFS) fprintf(stderr, "nfq-delay: packets dropped (ENOBUFS)\n");
        }
        int64_t now = now_us();
        while (heap_len > 0 && heap[0].due_us <= now) {
            struct held h = heap_pop();
            nfq_set_verdict(queue, h.id, NF_ACCEPT, 0, NULL);
        }
    }
    while (heap_len > 0) nfq_set_verdict(queue, heap_pop().id, NF_ACCEPT, 0, NULL);
    nfq_destroy_queue(queue);
    nfq_close(handle);
    return 0;
}

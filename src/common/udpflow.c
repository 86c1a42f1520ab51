/* udpflow.c - the connector's UDP flows. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ippkt.h"
#include "udpflow.h"

#define FLOW_BUCKETS 4096 /* a power of two */

struct uflow {
  struct uflow *next, *prev;
  struct uflow *hnext; /* hash chain */
  struct udpflows *u;
  void *owner;
  size_t *owner_n;
  int family;
  uint8_t agent[16], vip[16];
  uint16_t aport, vport;
  uv_udp_t sock;
  uint64_t last;
};

struct udpflows {
  uv_loop_t *loop;
  struct udpflow_io io;
  size_t max, per_owner;
  struct uflow *flows;
  struct uflow *hash[FLOW_BUCKETS];
  size_t n;
  uint8_t buf[65536];
  uint8_t pkt[65536];
};

int udpflows_new(struct udpflows **out, uv_loop_t *loop,
                 const struct udpflow_io *io, size_t max, size_t per_owner)
{
  struct udpflows *u = calloc(1, sizeof(*u));

  *out = NULL;
  if (!u)
    return -ENOMEM;
  u->loop = loop;
  u->io = *io;
  u->max = max;
  u->per_owner = per_owner;
  *out = u;
  return 0;
}

static void flow_closed(uv_handle_t *h)
{
  free(h->data);
}

static size_t bucket(const void *owner, int family, const uint8_t *agent,
                     const uint8_t *vip, uint16_t aport, uint16_t vport)
{
  uintptr_t p = (uintptr_t)owner;
  uint32_t h = 2166136261u ^ (uint32_t)p ^ (uint32_t)(p >> 32) ^
               (uint32_t)family ^ ((uint32_t)aport << 16 | vport);
  size_t alen = family == 4 ? 4 : 16;

  for (size_t i = 0; i < alen; i++)
    h = (h ^ agent[i] ^ (uint32_t)vip[i] << 8) * 16777619u;
  return h & (FLOW_BUCKETS - 1);
}

static void flow_free(struct udpflows *u, struct uflow *f)
{
  struct uflow **pp = &u->hash[bucket(f->owner, f->family, f->agent, f->vip,
                                      f->aport, f->vport)];

  while (*pp && *pp != f)
    pp = &(*pp)->hnext;
  if (*pp)
    *pp = f->hnext;
  (*f->owner_n)--;
  if (f->prev)
    f->prev->next = f->next;
  else
    u->flows = f->next;
  if (f->next)
    f->next->prev = f->prev;
  u->n--;
  uv_close((uv_handle_t *)&f->sock, flow_closed);
}

static void flow_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
  struct uflow *f = h->data;
  (void)hint;
  /* Room for the IPv6 and UDP headers in front of the payload. */
  *b = uv_buf_init((char *)f->u->buf + 48, sizeof(f->u->buf) - 48);
}

static void flow_recv(uv_udp_t *h, ssize_t n, const uv_buf_t *b,
                      const struct sockaddr *from, unsigned flags)
{
  struct uflow *f = h->data;
  struct udpflows *u = f->u;
  int k;

  if (n < 0 || (n == 0 && !from) || (flags & UV_UDP_PARTIAL))
    return;
  f->last = uv_now(u->loop);
  /* The answer comes from the virtual address the agent sent to. */
  k = ippkt_build_udp(u->pkt, sizeof(u->pkt), f->family, f->vip, f->vport,
                      f->agent, f->aport, (const uint8_t *)b->base,
                      (size_t)n);
  if (k < 0) {
    u->io.drop(UDPFLOW_TOO_LARGE, u->io.ud);
    return;
  }
  u->io.reply(f->owner, u->pkt, (size_t)k, u->io.ud);
}

void udpflows_input(struct udpflows *u, void *owner, size_t *owner_n,
                    const struct sockaddr *backend, const struct ippkt *ip,
                    const uint8_t *l4, size_t l4len)
{
  uint16_t aport = (uint16_t)(l4[0] << 8 | l4[1]);
  uint16_t vport = (uint16_t)(l4[2] << 8 | l4[3]);
  size_t h = bucket(owner, ip->version, ip->src, ip->dst, aport, vport);
  struct uflow *f;
  uv_buf_t b;

  for (f = u->hash[h]; f; f = f->hnext)
    if (f->owner == owner && f->family == ip->version &&
        f->aport == aport && f->vport == vport &&
        !memcmp(f->agent, ip->src, ip->addrlen) &&
        !memcmp(f->vip, ip->dst, ip->addrlen))
      break;
  if (!f) {
    /* Each flow is a socket: one agent may not take them all. */
    if (u->n >= u->max || *owner_n >= u->per_owner ||
        !(f = calloc(1, sizeof(*f)))) {
      u->io.drop(UDPFLOW_LIMIT, u->io.ud);
      return;
    }
    f->u = u;
    f->owner = owner;
    f->owner_n = owner_n;
    f->family = ip->version;
    memcpy(f->agent, ip->src, ip->addrlen);
    memcpy(f->vip, ip->dst, ip->addrlen);
    f->aport = aport;
    f->vport = vport;
    uv_udp_init(u->loop, &f->sock);
    f->sock.data = f;
    if (uv_udp_connect(&f->sock, backend) < 0 ||
        uv_udp_recv_start(&f->sock, flow_alloc, flow_recv) < 0) {
      uv_close((uv_handle_t *)&f->sock, flow_closed);
      u->io.drop(UDPFLOW_LIMIT, u->io.ud);
      return;
    }
    f->next = u->flows;
    if (u->flows)
      u->flows->prev = f;
    u->flows = f;
    u->n++;
    f->hnext = u->hash[h];
    u->hash[h] = f;
    (*owner_n)++;
  }
  f->last = uv_now(u->loop);
  b = uv_buf_init((char *)(uintptr_t)(l4 + 8), (unsigned)(l4len - 8));
  if (uv_udp_try_send(&f->sock, &b, 1, NULL) < 0)
    u->io.drop(UDPFLOW_QUEUE_FULL, u->io.ud);
}

void udpflows_owner_gone(struct udpflows *u, void *owner, size_t *owner_n)
{
  for (struct uflow *f = u->flows, *next; f && *owner_n; f = next) {
    next = f->next;
    if (f->owner == owner)
      flow_free(u, f);
  }
}

void udpflows_sweep(struct udpflows *u, uint64_t idle_ms)
{
  uint64_t now = uv_now(u->loop);

  for (struct uflow *f = u->flows, *next; f; f = next) {
    next = f->next;
    if (now - f->last >= idle_ms)
      flow_free(u, f);
  }
}

size_t udpflows_count(const struct udpflows *u)
{
  return u->n;
}

void udpflows_del(struct udpflows *u)
{
  if (!u)
    return;
  while (u->flows)
    flow_free(u, u->flows);
  free(u);
}

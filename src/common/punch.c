/* punch.c - connectivity checks between agent and connector. */
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/hmac.h>

#include "netaddr.h"
#include "punch.h"

static const uint32_t type_pref[] = {
  [WIRE_CAND_HOST] = 126,
  [WIRE_CAND_SRFLX] = 100,
  [WIRE_CAND_PRFLX] = 110,
  [WIRE_CAND_RELAY] = 0,
};

uint32_t punch_cand_priority(uint32_t type, int family)
{
  uint32_t tp = type <= WIRE_CAND_RELAY ? type_pref[type] : 0;
  uint32_t lp = family == AF_INET6 ? 65534 : 65535;
  return tp << 24 | lp << 8 | (256 - 1);
}

uint64_t punch_pair_priority(uint32_t g, uint32_t d)
{
  uint64_t lo = g < d ? g : d, hi = g < d ? d : g;
  return (lo << 32) + 2 * hi + (g > d ? 1 : 0);
}

int punch_addr_eq(const struct sockaddr *a, const struct sockaddr *b)
{
  if (a->sa_family != b->sa_family)
    return 0;
  if (a->sa_family == AF_INET) {
    const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  if (a->sa_family == AF_INET6) {
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port &&
           !memcmp(&x->sin6_addr, &y->sin6_addr, 16);
  }
  return 0;
}

static void set_port(struct sockaddr_storage *ss, uint16_t port)
{
  if (ss->ss_family == AF_INET6)
    ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
  else
    ((struct sockaddr_in *)ss)->sin_port = htons(port);
}

static size_t sa_size(const struct sockaddr *sa)
{
  return sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                   : sizeof(struct sockaddr_in);
}

static void add_cand(struct wire_candidate *c, uint32_t type,
                     const struct sockaddr *sa, const char *prefix)
{
  char a[64];
  const void *ip = sa->sa_family == AF_INET6
                       ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
                       : (const void *)&((const struct sockaddr_in *)sa)->sin_addr;

  memset(c, 0, sizeof(*c));
  c->type = type;
  memcpy(&c->addr, sa, sa_size(sa));
  c->priority = punch_cand_priority(type, sa->sa_family);
  inet_ntop(sa->sa_family, ip, a, sizeof(a));
  snprintf(c->foundation, sizeof(c->foundation), "%s_%s", prefix, a);
}

static int usable(const struct sockaddr *sa)
{
  if (sa->sa_family == AF_INET) {
    uint32_t a = ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr);
    return (a >> 24) != 127 && (a >> 16) != 0xa9fe && a != 0;
  }
  if (sa->sa_family == AF_INET6) {
    const uint8_t *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const uint8_t lo[16] = { [15] = 1 };
    return memcmp(b, lo, 16) && !(b[0] == 0xfe && (b[1] & 0xc0) == 0x80);
  }
  return 0;
}

size_t punch_gather(struct wire_candidate *cand, size_t max, int family,
                    uint16_t port, const struct sockaddr *observed,
                    const struct sockaddr *relay)
{
  struct ifaddrs *ifa, *i;
  size_t n = 0;

  if (getifaddrs(&ifa) == 0) {
    for (i = ifa; i && n < max; i = i->ifa_next) {
      struct sockaddr_storage ss;
      int dup = 0;
      /* Not point-to-point links: ztna's own TUN, and VPN tunnels a peer
       * cannot reach either. */
      if (!i->ifa_addr || i->ifa_addr->sa_family != family ||
          !usable(i->ifa_addr) || !(i->ifa_flags & IFF_UP) ||
          (i->ifa_flags & (IFF_POINTOPOINT | IFF_LOOPBACK)))
        continue;
      memset(&ss, 0, sizeof(ss));
      memcpy(&ss, i->ifa_addr, sa_size(i->ifa_addr));
      set_port(&ss, port);
      for (size_t k = 0; k < n; k++)
        dup |= punch_addr_eq((struct sockaddr *)&cand[k].addr,
                       (struct sockaddr *)&ss);
      if (!dup)
        add_cand(&cand[n++], WIRE_CAND_HOST, (struct sockaddr *)&ss, "host");
    }
    freeifaddrs(ifa);
  }
  if (observed && observed->sa_family == family && n < max) {
    int dup = 0;
    for (size_t k = 0; k < n; k++)
      dup |= punch_addr_eq((struct sockaddr *)&cand[k].addr, observed);
    if (!dup) {
      add_cand(&cand[n], WIRE_CAND_SRFLX, observed, "srflx");
      if (n > 0) {
        cand[n].has_related = 1;
        cand[n].related = cand[0].addr;
      }
      n++;
    }
  }
  /* The relay always works; it is offered, never checked. */
  if (relay && n < max)
    add_cand(&cand[n++], WIRE_CAND_RELAY, relay, "relay");
  return n;
}

/* --- the check list ------------------------------------------------------------ */

/* A check's transaction id must be unpredictable: its answer is the only
 * proof that the peer saw the check. Returns 0 or -1. */
static int new_txn(uint8_t *txn)
{
  return getrandom(txn, 12, 0) == 12 ? 0 : -1;
}

static int find_pair(const struct punch *p, const struct sockaddr *sa)
{
  for (size_t i = 0; i < p->npairs; i++)
    if (punch_addr_eq((const struct sockaddr *)&p->pairs[i].remote, sa))
      return (int)i;
  return -1;
}

/* Inserts keeping the list in descending priority; returns the index or
 * -1 when full. */
static int add_pair(struct punch *p, const struct sockaddr *sa, uint32_t type,
                    uint64_t prio, uint64_t now_ms)
{
  size_t at = p->npairs;
  uint8_t txn[12];

  if (p->npairs >= PUNCH_MAX_PAIRS || new_txn(txn) < 0)
    return -1; /* full, or no randomness: no check */
  while (at > 0 && p->pairs[at - 1].priority < prio)
    at--;
  memmove(&p->pairs[at + 1], &p->pairs[at],
          (p->npairs - at) * sizeof(p->pairs[0]));
  memset(&p->pairs[at], 0, sizeof(p->pairs[0]));
  memcpy(p->pairs[at].txn, txn, sizeof(txn));
  memcpy(&p->pairs[at].remote, sa, sa_size(sa));
  p->pairs[at].remote_type = type;
  p->pairs[at].priority = prio;
  p->pairs[at].state = PAIR_WAITING;
  p->pairs[at].next_ms = now_ms;
  p->npairs++;
  return (int)at;
}

static uint64_t priority_for(const struct punch *p, uint32_t remote)
{
  return p->controlling ? punch_pair_priority(p->local_priority, remote)
                        : punch_pair_priority(remote, p->local_priority);
}

int punch_addr_usable(const struct sockaddr *sa)
{
  const uint8_t *b;
  uint32_t a;

  if (sa->sa_family == AF_INET6) {
    static const uint8_t mapped[12] = { [10] = 0xff, [11] = 0xff };
    static const uint8_t zero[16];
    b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    if (memcmp(b, mapped, 12)) {
      if (!memcmp(b, zero, 15) && (b[15] == 0 || b[15] == 1))
        return 0; /* unspecified, loopback */
      if (b[0] == 0xff || (b[0] == 0xfe && (b[1] & 0xc0) == 0x80))
        return 0; /* multicast, link-local */
      return 1;
    }
    b += 12; /* IPv4-mapped: judge the IPv4 address */
  } else if (sa->sa_family == AF_INET) {
    b = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
  } else {
    return 0;
  }
  a = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
  if ((a >> 24) == 0 || (a >> 24) == 127 || (a >> 16) == 0xa9fe ||
      (a >> 28) == 0xe || a == 0xffffffffu)
    return 0; /* this network, loopback, link-local and metadata, multicast,
               * broadcast */
  return 1;
}

void punch_start(struct punch *p, const struct punch_io *io, int controlling,
                 int family, const struct wire_candidate *peer, size_t n,
                 uint64_t now_ms)
{
  memset(p, 0, sizeof(*p));
  p->io = *io;
  p->controlling = controlling;
  p->family = family;
  p->local_priority = punch_cand_priority(WIRE_CAND_HOST, family);
  p->state = PUNCH_CHECKING;
  p->start_ms = now_ms;
  p->winner = -1;
  for (size_t i = 0; i < n; i++) {
    const struct sockaddr *sa = (const struct sockaddr *)&peer[i].addr;
    if (peer[i].type == WIRE_CAND_RELAY || sa->sa_family != family ||
        find_pair(p, sa) >= 0)
      continue;
    if (!punch_addr_usable(sa)) {
      p->refused++; /* the peer may not aim our checks at such places */
      continue;
    }
    if (family == AF_INET && !((const struct sockaddr_in *)sa)->sin_port)
      continue;
    if (family == AF_INET6 && !((const struct sockaddr_in6 *)sa)->sin6_port)
      continue;
    add_pair(p, sa, peer[i].type, priority_for(p, peer[i].priority), now_ms);
  }
}

int punch_key_derive(const uint8_t *root, uint64_t session, uint8_t *key)
{
  static const char label[] = "ztna punch";
  uint8_t msg[sizeof(label) - 1 + 8];
  Hmac h;
  int rv = -1;

  memcpy(msg, label, sizeof(label) - 1);
  for (int i = 0; i < 8; i++)
    msg[sizeof(label) - 1 + i] = (uint8_t)(session >> (56 - 8 * i));
  if (wc_HmacInit(&h, NULL, INVALID_DEVID) != 0)
    return -1;
  if (wc_HmacSetKey(&h, WC_SHA256, root, 32) == 0 &&
      wc_HmacUpdate(&h, msg, sizeof(msg)) == 0 && wc_HmacFinal(&h, key) == 0)
    rv = 0;
  wc_HmacFree(&h);
  return rv;
}

void punch_auth_sign(const struct punch_auth *a, uint8_t *buf, size_t n)
{
  Hmac h;
  uint8_t mac[WC_SHA256_DIGEST_SIZE];

  if (n < WIRE_CTL_TAG_LEN)
    return;
  if (wc_HmacInit(&h, NULL, INVALID_DEVID) != 0)
    return;
  if (wc_HmacSetKey(&h, WC_SHA256, a->key, PUNCH_KEY_LEN) == 0 &&
      wc_HmacUpdate(&h, buf, (word32)(n - WIRE_CTL_TAG_LEN)) == 0 &&
      wc_HmacFinal(&h, mac) == 0)
    memcpy(buf + n - WIRE_CTL_TAG_LEN, mac, WIRE_CTL_TAG_LEN);
  wc_HmacFree(&h);
}

int punch_auth_verify(const struct punch_auth *a, const struct wire_ctl *c)
{
  uint8_t buf[128];
  uint8_t diff = 0;

  if (!a || !a->on || !c->auth || !c->raw || c->rawlen > sizeof(buf) ||
      c->rawlen < WIRE_CTL_TAG_LEN)
    return 0;
  if (c->kind == WIRE_CTL_BIND_REQ && c->session != a->session)
    return 0;
  memcpy(buf, c->raw, c->rawlen);
  memset(buf + c->rawlen - WIRE_CTL_TAG_LEN, 0, WIRE_CTL_TAG_LEN);
  punch_auth_sign(a, buf, c->rawlen);
  for (size_t i = 0; i < WIRE_CTL_TAG_LEN; i++)
    diff |= buf[c->rawlen - WIRE_CTL_TAG_LEN + i] ^ c->tag[i];
  return diff == 0;
}

/* Encodes c, tagged when auth is on; returns the length or <= 0. */
static int encode_ctl(uint8_t *buf, size_t cap, struct wire_ctl *c,
                      const struct punch_auth *auth)
{
  int n;

  if (auth && auth->on) {
    c->auth = 1;
    if (c->kind == WIRE_CTL_BIND_REQ) {
      c->session = auth->session;
      c->cidlen = auth->cidlen;
      memcpy(c->cid, auth->cid, auth->cidlen);
    }
  }
  n = wire_ctl_encode(buf, cap, c);
  if (n > 0 && c->auth)
    punch_auth_sign(auth, buf, (size_t)n);
  return n;
}

void punch_set_auth(struct punch *p, const struct punch_auth *a)
{
  p->auth = *a;
  p->auth.on = 1;
  /* What untagged answers proved counts no more: check those pairs again
   * (fresh transaction ids, tagged). */
  for (size_t i = 0; i < p->npairs; i++) {
    struct punch_pair *pp = &p->pairs[i];
    if (pp->state == PAIR_SUCCEEDED || pp->state == PAIR_PROGRESS) {
      pp->state = PAIR_WAITING;
      pp->tx = 0;
      pp->next_ms = p->last_pace_ms;
      if (new_txn(pp->txn) < 0)
        pp->state = PAIR_FAILED;
    }
  }
  if (p->state == PUNCH_SUCCEEDED) {
    p->state = PUNCH_CHECKING;
    p->winner = -1;
  }
}

void punch_prime(const struct punch_io *io, int family,
                 const struct wire_candidate *peer, size_t n,
                 const struct punch_auth *auth)
{
  struct wire_ctl c;
  uint8_t buf[WIRE_ABIND_REQ_LEN];
  int k;

  if (!io->send_ttl)
    return;
  memset(&c, 0, sizeof(c));
  c.kind = WIRE_CTL_BIND_REQ;
  if (new_txn(c.txn) < 0)
    return;
  k = encode_ctl(buf, sizeof(buf), &c, auth);
  for (size_t i = 0; k > 0 && i < n; i++) {
    const struct sockaddr *sa = (const struct sockaddr *)&peer[i].addr;
    /* The same candidates the checks will go to, no others. */
    if (peer[i].type == WIRE_CAND_RELAY || sa->sa_family != family ||
        !punch_addr_usable(sa))
      continue;
    io->send_ttl(sa, buf, (size_t)k, PUNCH_PRIME_TTL, io->ud);
  }
}

static void fail(struct punch *p, const char *why)
{
  p->state = PUNCH_FAILED;
  snprintf(p->why, sizeof(p->why), "%s", why);
}

static void send_check(struct punch *p, struct punch_pair *pp, uint64_t now)
{
  struct wire_ctl c;
  uint8_t buf[WIRE_ABIND_REQ_LEN];
  int n;
  uint64_t rto;

  memset(&c, 0, sizeof(c));
  c.kind = WIRE_CTL_BIND_REQ;
  memcpy(c.txn, pp->txn, 12);
  c.priority = pp->priority;
  c.use_candidate = 0;
  n = encode_ctl(buf, sizeof(buf), &c, &p->auth);
  if (n > 0)
    p->io.send((const struct sockaddr *)&pp->remote, buf, (size_t)n,
               p->io.ud);
  rto = (uint64_t)PUNCH_RTO_MS << (pp->tx < 5 ? pp->tx : 5);
  if (rto > PUNCH_RTO_MAX_MS)
    rto = PUNCH_RTO_MAX_MS;
  pp->tx++;
  pp->sent_ms = now;
  pp->next_ms = now + rto;
  pp->state = PAIR_PROGRESS;
  p->last_pace_ms = now;
}

uint64_t punch_tick(struct punch *p, uint64_t now)
{
  uint64_t wake = UINT64_MAX;
  size_t alive = 0;
  struct punch_pair *due = NULL;

  if (p->state != PUNCH_CHECKING)
    return 0;
  if (p->npairs == 0) {
    fail(p, "no candidates of our address family to check");
    return 0;
  }
  for (size_t i = 0; i < p->npairs; i++) {
    struct punch_pair *pp = &p->pairs[i];
    if (pp->state == PAIR_PROGRESS && pp->tx >= PUNCH_TRANSMISSIONS &&
        now >= pp->next_ms)
      pp->state = PAIR_FAILED;
    if (pp->state == PAIR_FAILED || pp->state == PAIR_SUCCEEDED)
      continue;
    alive++;
    if (pp->tx < PUNCH_TRANSMISSIONS && pp->next_ms <= now && !due)
      due = pp; /* the list is in priority order */
    if (pp->next_ms < wake)
      wake = pp->next_ms;
  }
  if (alive == 0) {
    snprintf(p->why, sizeof(p->why), "no answer to %d checks on any of "
             "%zu candidate pairs", PUNCH_TRANSMISSIONS, p->npairs);
    p->state = PUNCH_FAILED;
    return 0;
  }
  if (now - p->start_ms >= PUNCH_CHECK_TIMEOUT_MS) {
    snprintf(p->why, sizeof(p->why), "no answer within %d s on any of %zu "
             "candidate pairs", PUNCH_CHECK_TIMEOUT_MS / 1000, p->npairs);
    p->state = PUNCH_FAILED;
    return 0;
  }
  if (due) {
    if (p->last_pace_ms && now - p->last_pace_ms < PUNCH_PACE_MS) {
      wake = p->last_pace_ms + PUNCH_PACE_MS;
    } else {
      send_check(p, due, now);
      wake = now + PUNCH_PACE_MS; /* the next pair may be due */
    }
  }
  if (wake > p->start_ms + PUNCH_CHECK_TIMEOUT_MS)
    wake = p->start_ms + PUNCH_CHECK_TIMEOUT_MS;
  return wake > now ? wake - now : 1;
}

int punch_rate_ok(struct punch_rate *r, unsigned per_sec, uint64_t now_ms)
{
  if (now_ms - r->window_ms >= 1000) {
    r->window_ms = now_ms;
    r->n = 0;
  }
  return r->n++ < per_sec;
}

int punch_answer(const struct punch_io *io, const struct wire_ctl *req,
                 const struct sockaddr *from, const struct punch_auth *auth)
{
  struct wire_ctl c;
  uint8_t buf[64];
  int n;

  if (req->auth && !punch_auth_verify(auth, req))
    return 0; /* not ours to answer, or forged */
  memset(&c, 0, sizeof(c));
  c.kind = WIRE_CTL_BIND_RESP;
  memcpy(c.txn, req->txn, 12);
  c.success = 1;
  c.has_mapped = 1;
  memcpy(&c.mapped, from, sa_size(from));
  n = encode_ctl(buf, sizeof(buf), &c, req->auth ? auth : NULL);
  if (n <= 0)
    return 0;
  io->send(from, buf, (size_t)n, io->ud);
  return 1;
}

int punch_input(struct punch *p, const struct wire_ctl *c,
                const struct sockaddr *from, uint64_t now)
{
  int i;

  if (c->kind != WIRE_CTL_BIND_REQ && c->kind != WIRE_CTL_BIND_RESP)
    return 0;
  if (p->auth.on ? !punch_auth_verify(&p->auth, c) : c->auth) {
    /* Authenticated punches take only packets tagged for them (counted
     * when a tag was there and wrong); unbound ones only untagged. */
    if (p->auth.on && c->auth && (c->kind == WIRE_CTL_BIND_RESP ||
                                  c->session == p->auth.session))
      p->rejected++;
    return 0;
  }
  if (c->kind == WIRE_CTL_BIND_REQ) {
    /* The caller answers every request; here: learn and check back. */
    if (p->state != PUNCH_CHECKING)
      return 0;
    i = find_pair(p, from);
    if (i < 0) {
      /* A peer-reflexive candidate: the peer's NAT mapped it somewhere
       * its candidates did not say. Check it at once. On the controlling
       * side (the agent), whose first answered check becomes the path,
       * only from an authenticated request: an untagged one carries no
       * proof of who sent it, so anyone could make themselves a
       * candidate. */
      if (from->sa_family != p->family ||
          (p->controlling && !p->auth.on) || !punch_addr_usable(from))
        return 0;
      i = add_pair(p, from, WIRE_CAND_PRFLX,
                   priority_for(p, punch_cand_priority(WIRE_CAND_PRFLX,
                                                       from->sa_family)),
                   now);
      if (i < 0)
        return 0;
    } else if (p->pairs[i].state == PAIR_FAILED) {
      /* The peer reaches us on it now: try again (a triggered check). */
      p->pairs[i].state = PAIR_WAITING;
      p->pairs[i].tx = 0;
      p->pairs[i].next_ms = now;
    }
    return 1;
  }
  if (c->kind != WIRE_CTL_BIND_RESP)
    return 0;
  for (size_t k = 0; k < p->npairs; k++) {
    struct punch_pair *pp = &p->pairs[k];
    if (memcmp(pp->txn, c->txn, 12) ||
        !punch_addr_eq((const struct sockaddr *)&pp->remote, from))
      continue;
    if (pp->state == PAIR_SUCCEEDED || !c->success)
      return 1;
    pp->state = PAIR_SUCCEEDED;
    pp->rtt_ms = (uint32_t)(now - pp->sent_ms);
    if (c->has_mapped) {
      pp->mapped = c->mapped;
      pp->has_mapped = 1;
    }
    if (p->state == PUNCH_CHECKING) {
      p->state = PUNCH_SUCCEEDED;
      p->winner = (int)k;
    }
    return 1;
  }
  return 0;
}

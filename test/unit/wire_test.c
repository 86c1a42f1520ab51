/* wire_test.c - every golden vector of protocol.md 2, 5 and 6, both ways,
 * and hostile input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "err.h"
#include "testutil.h"
#include "wire.h"

#define ID "echo-service"

static void assert_bytes(const uint8_t *got, int gotlen, const char *hex)
{
  uint8_t want[512];
  size_t n = unhex(hex, want, sizeof(want));
  assert_int_equal(gotlen, (int)n);
  assert_memory_equal(got, want, n);
}

/* --- section 2 ---------------------------------------------------------- */

static void test_wire_qad_v4(void **state)
{
  struct sockaddr_storage ss, back;
  uint8_t buf[32], in[32];
  size_t n;
  (void)state;

  set_v4(&ss, "203.0.113.5", 54321);
  assert_bytes(buf, wire_qad_encode(buf, sizeof(buf), (void *)&ss),
               "01 cb 00 71 05 d4 31");
  n = unhex("01 cb 00 71 05 d4 31", in, sizeof(in));
  assert_int_equal(wire_classify(in, n), WIRE_KIND_QAD);
  assert_int_equal(wire_qad_decode(in, n, &back), 0);
  assert_int_equal(back.ss_family, AF_INET);
  assert_memory_equal(&((struct sockaddr_in *)&back)->sin_addr,
                      &((struct sockaddr_in *)&ss)->sin_addr, 4);
  assert_int_equal(((struct sockaddr_in *)&back)->sin_port,
                   htons(54321));
  for (size_t k = 0; k < n; k++)
    assert_int_equal(wire_qad_decode(in, k, &back), ZTNA_ERR_SHORT);
  assert_int_equal(wire_qad_encode(buf, 6, (void *)&ss), ZTNA_ERR_TOO_LARGE);
}

static void test_wire_qad_v6(void **state)
{
  struct sockaddr_storage ss, back;
  uint8_t buf[32];
  int n;
  (void)state;

  set_v6(&ss, "2001:db8::1", 4434);
  n = wire_qad_encode(buf, sizeof(buf), (void *)&ss);
  assert_bytes(buf, n, "02 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01"
                       " 11 52");
  assert_int_equal(wire_qad_decode(buf, (size_t)n, &back), 0);
  assert_int_equal(back.ss_family, AF_INET6);
  assert_memory_equal(&((struct sockaddr_in6 *)&back)->sin6_addr,
                      &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
  for (int k = 0; k < n; k++)
    assert_int_equal(wire_qad_decode(buf, (size_t)k, &back), ZTNA_ERR_SHORT);
  /* An IPv4-mapped address goes out in the original's 7-byte form. */
  set_v6(&ss, "::ffff:198.51.100.7", 61000);
  assert_bytes(buf, wire_qad_encode(buf, sizeof(buf), (void *)&ss),
               "01 c6 33 64 07 ee 48");
}

static void test_wire_register(void **state)
{
  uint8_t buf[300], in[300], type;
  const uint8_t *id;
  size_t idlen, n;
  (void)state;

  assert_bytes(buf, wire_register_encode(buf, sizeof(buf), WIRE_REG_AGENT,
                                         ID, strlen(ID)),
               "10 0c 65 63 68 6f 2d 73 65 72 76 69 63 65");
  assert_bytes(buf, wire_register_encode(buf, sizeof(buf),
                                         WIRE_REG_CONNECTOR, ID, strlen(ID)),
               "11 0c \"echo-service\"");
  n = unhex("10 0c \"echo-service\" ff ff", in, sizeof(in));
  assert_int_equal(wire_classify(in, n), WIRE_KIND_REGISTER);
  assert_int_equal(wire_register_decode(in, n, &type, &id, &idlen), 0);
  assert_int_equal(type, WIRE_REG_AGENT);
  assert_int_equal(idlen, 12);
  assert_memory_equal(id, ID, 12);
  /* Too short for its length byte: dropped without an answer. */
  for (size_t k = 0; k < 14; k++)
    assert_int_equal(wire_register_decode(in, k, &type, &id, &idlen),
                     ZTNA_ERR_SHORT);
  /* Empty id: NACK 01. */
  n = unhex("11 00", in, sizeof(in));
  assert_int_equal(wire_register_decode(in, n, &type, &id, &idlen),
                   ZTNA_ERR_MALFORMED);
  /* Invalid UTF-8: NACK 01 echoing the bytes received. */
  n = unhex("10 03 61 c3 28", in, sizeof(in));
  assert_int_equal(wire_register_decode(in, n, &type, &id, &idlen),
                   ZTNA_ERR_UTF8);
  assert_int_equal(idlen, 3);
  assert_memory_equal(id, "a\xc3\x28", 3);
  /* Overlong encodings and surrogates are not UTF-8 either. */
  n = unhex("10 02 c0 af", in, sizeof(in));
  assert_int_equal(wire_register_decode(in, n, &type, &id, &idlen),
                   ZTNA_ERR_UTF8);
  n = unhex("10 03 ed a0 80", in, sizeof(in));
  assert_int_equal(wire_register_decode(in, n, &type, &id, &idlen),
                   ZTNA_ERR_UTF8);
  /* The longest id fits; one more byte does not encode. */
  memset(in, 'a', 256);
  assert_int_equal(wire_register_encode(buf, sizeof(buf), WIRE_REG_AGENT, in,
                                        255), 257);
  assert_int_equal(wire_register_encode(buf, sizeof(buf), WIRE_REG_AGENT, in,
                                        256), ZTNA_ERR_TOO_LARGE);
}

static void test_wire_status(void **state)
{
  uint8_t buf[300], type, status;
  const uint8_t *id;
  size_t idlen;
  int n;
  (void)state;

  n = wire_status_encode(buf, sizeof(buf), WIRE_REG_ACK, 0, ID, strlen(ID));
  assert_bytes(buf, n, "12 00 0c \"echo-service\"");
  assert_int_equal(wire_classify(buf, (size_t)n), WIRE_KIND_ACK);
  n = wire_status_encode(buf, sizeof(buf), WIRE_REG_NACK, WIRE_NACK_DENIED,
                         ID, strlen(ID));
  assert_bytes(buf, n, "13 02 0c \"echo-service\"");
  assert_int_equal(wire_status_decode(buf, (size_t)n, &type, &status, &id,
                                      &idlen), 0);
  assert_int_equal(type, WIRE_REG_NACK);
  assert_int_equal(status, 2);
  assert_int_equal(idlen, 12);
  for (int k = 0; k < n; k++)
    assert_int_equal(wire_status_decode(buf, (size_t)k, &type, &status, &id,
                                        &idlen), ZTNA_ERR_SHORT);
}

static void test_wire_routed(void **state)
{
  uint8_t buf[300], in[64];
  const uint8_t *id, *pkt;
  size_t idlen, pktlen, n;
  (void)state;

  assert_bytes(buf, wire_routed_encode_header(buf, sizeof(buf), ID, 12),
               "2f 0c \"echo-service\"");
  n = unhex("2f 0c \"echo-service\" 45 00 00 14", in, sizeof(in));
  assert_int_equal(wire_classify(in, n), WIRE_KIND_ROUTED);
  assert_int_equal(wire_routed_decode(in, n, &id, &idlen, &pkt, &pktlen), 0);
  assert_int_equal(idlen, 12);
  assert_int_equal(pktlen, 4);
  assert_int_equal(pkt[0], 0x45);
  /* Header only, no packet: short. Empty id: malformed. */
  assert_int_equal(wire_routed_decode(in, 14, &id, &idlen, &pkt, &pktlen),
                   ZTNA_ERR_SHORT);
  n = unhex("2f 00 45", in, sizeof(in));
  assert_int_equal(wire_routed_decode(in, n, &id, &idlen, &pkt, &pktlen),
                   ZTNA_ERR_MALFORMED);
  n = unhex("2f ff 45", in, sizeof(in));
  assert_int_equal(wire_routed_decode(in, n, &id, &idlen, &pkt, &pktlen),
                   ZTNA_ERR_SHORT);
}

/* ztna's agent-gone extension: golden bytes, exact lengths only. */
static void test_wire_agent_gone(void **state)
{
  uint8_t buf[64], in[64], addr[16], v4[4] = { 100, 64, 1, 7 };
  uint8_t v6[16] = { 0xfd, 0x7a, 0x7a, 0x74, 0x6e, 0x61, 0, 0,
                     0,    0,    0,    0,    0,    0,    1, 2 };
  int family;
  size_t n;
  (void)state;

  assert_bytes(buf, wire_agent_gone_encode(buf, sizeof(buf), 4, v4),
               "30 04 64 40 01 07");
  assert_bytes(buf, wire_agent_gone_encode(buf, sizeof(buf), 6, v6),
               "30 06 fd 7a 7a 74 6e 61 00 00 00 00 00 00 00 00 01 02");
  assert_int_equal(wire_agent_gone_encode(buf, 5, 4, v4), ZTNA_ERR_TOO_LARGE);
  assert_int_equal(wire_agent_gone_encode(buf, sizeof(buf), 5, v4),
                   ZTNA_ERR_MALFORMED);
  n = unhex("30 04 64 40 01 07", in, sizeof(in));
  assert_int_equal(wire_agent_gone_decode(in, n, &family, addr), 0);
  assert_int_equal(family, 4);
  assert_memory_equal(addr, v4, 4);
  /* One byte more or less, or a family that does not fit the length. */
  assert_int_equal(wire_agent_gone_decode(in, n - 1, &family, addr),
                   ZTNA_ERR_MALFORMED);
  n = unhex("30 04 64 40 01 07 00", in, sizeof(in));
  assert_int_equal(wire_agent_gone_decode(in, n, &family, addr),
                   ZTNA_ERR_MALFORMED);
  n = unhex("30 06 64 40 01 07", in, sizeof(in));
  assert_int_equal(wire_agent_gone_decode(in, n, &family, addr),
                   ZTNA_ERR_MALFORMED);
  assert_int_equal(wire_agent_gone_decode(in, 1, &family, addr),
                   ZTNA_ERR_MALFORMED);
}

/* ztna's relay-session extension (protocol.md 10): golden bytes, exact
 * lengths, and the registration trailer. */
static void test_wire_relay_sessions(void **state)
{
  uint8_t buf[64], in[64], status, reason;
  const uint8_t *id, *pkt;
  size_t idlen, pktlen, n;
  uint32_t req;
  uint64_t sid;
  (void)state;

  assert_bytes(buf, wire_session_open_encode(buf, sizeof(buf), 0x01020304,
                                             "echo", 4),
               "31 01 02 03 04 04 \"echo\"");
  assert_bytes(buf, wire_session_opened_encode(buf, sizeof(buf), 7, 0,
                                               0x1122334455667788ull),
               "32 00 00 00 07 00 11 22 33 44 55 66 77 88");
  assert_bytes(buf, wire_session_data_header(buf, sizeof(buf), 0x2a),
               "33 00 00 00 00 00 00 00 2a");
  assert_bytes(buf, wire_session_closed_encode(buf, sizeof(buf), 0x2a, 2),
               "34 00 00 00 00 00 00 00 2a 02");
  assert_int_equal(wire_session_open_encode(buf, sizeof(buf), 1, "", 0),
                   ZTNA_ERR_MALFORMED);
  assert_int_equal(wire_session_opened_encode(buf, 13, 1, 0, 1),
                   ZTNA_ERR_TOO_LARGE);

  n = unhex("31 00 00 00 09 04 \"echo\"", in, sizeof(in));
  assert_int_equal(wire_classify(in, n), WIRE_KIND_SESSION_OPEN);
  assert_int_equal(wire_session_open_decode(in, n, &req, &id, &idlen), 0);
  assert_true(req == 9 && idlen == 4 && !memcmp(id, "echo", 4));
  /* A byte more or less, an empty id, an id that is not UTF-8. */
  assert_int_equal(wire_session_open_decode(in, n - 1, &req, &id, &idlen),
                   ZTNA_ERR_MALFORMED);
  n = unhex("31 00 00 00 09 04 \"echo\" 00", in, sizeof(in));
  assert_int_equal(wire_session_open_decode(in, n, &req, &id, &idlen),
                   ZTNA_ERR_MALFORMED);
  n = unhex("31 00 00 00 09 00", in, sizeof(in));
  assert_int_equal(wire_session_open_decode(in, n, &req, &id, &idlen),
                   ZTNA_ERR_MALFORMED);
  n = unhex("31 00 00 00 09 01 ff", in, sizeof(in));
  assert_int_equal(wire_session_open_decode(in, n, &req, &id, &idlen),
                   ZTNA_ERR_MALFORMED);

  n = unhex("32 00 00 00 07 03 00 00 00 00 00 00 00 00", in, sizeof(in));
  assert_int_equal(wire_classify(in, n), WIRE_KIND_SESSION_OPENED);
  assert_int_equal(wire_session_opened_decode(in, n, &req, &status, &sid), 0);
  assert_true(req == 7 && status == WIRE_SESSION_NO_CONNECTOR && sid == 0);
  assert_int_equal(wire_session_opened_decode(in, n - 1, &req, &status, &sid),
                   ZTNA_ERR_MALFORMED);

  n = unhex("33 00 00 00 00 00 00 01 00 40 41", in, sizeof(in));
  assert_int_equal(wire_classify(in, n), WIRE_KIND_SESSION_DATA);
  assert_int_equal(wire_session_data_decode(in, n, &sid, &pkt, &pktlen), 0);
  assert_true(sid == 256 && pktlen == 2 && pkt[0] == 0x40);
  /* A header without a packet carries nothing. */
  assert_int_equal(wire_session_data_decode(in, 9, &sid, &pkt, &pktlen),
                   ZTNA_ERR_MALFORMED);

  n = unhex("34 ff ff ff ff ff ff ff ff 01", in, sizeof(in));
  assert_int_equal(wire_classify(in, n), WIRE_KIND_SESSION_CLOSED);
  assert_int_equal(wire_session_closed_decode(in, n, &sid, &reason), 0);
  assert_true(sid == UINT64_MAX && reason == WIRE_SESSION_REPLACED);
  assert_int_equal(wire_session_closed_decode(in, n + 1, &sid, &reason),
                   ZTNA_ERR_MALFORMED);

  /* The connector's registration trailer; none, or a foreign one. */
  n = unhex("11 04 \"echo\" 7a 01", in, sizeof(in));
  assert_int_equal(wire_register_flags(in, n), WIRE_REG_FLAG_SESSIONS);
  assert_int_equal(wire_register_decode(in, n, &status, &id, &idlen), 0);
  assert_int_equal(idlen, 4);
  assert_int_equal(wire_register_flags(in, n - 2), 0);
  n = unhex("11 04 \"echo\" 00 01", in, sizeof(in));
  assert_int_equal(wire_register_flags(in, n), 0);
  n = unhex("11 04 \"echo\" 7a", in, sizeof(in));
  assert_int_equal(wire_register_flags(in, n), 0);
}

static void test_wire_classify(void **state)
{
  uint8_t b[1] = { 0 };
  (void)state;

  assert_int_equal(wire_classify(b, 0), WIRE_KIND_UNKNOWN);
  for (int v = 0; v < 256; v++) {
    enum wire_kind k;
    b[0] = (uint8_t)v;
    k = wire_classify(b, 1);
    if (v >= 0x45 && v <= 0x4f)
      assert_int_equal(k, WIRE_KIND_IPV4);
    else if (v >= 0x60 && v <= 0x6f)
      assert_int_equal(k, WIRE_KIND_IPV6);
    else if (v == 0x01 || v == 0x02)
      assert_int_equal(k, WIRE_KIND_QAD);
    else if (v == 0x10 || v == 0x11)
      assert_int_equal(k, WIRE_KIND_REGISTER);
    else if (v == 0x12)
      assert_int_equal(k, WIRE_KIND_ACK);
    else if (v == 0x13)
      assert_int_equal(k, WIRE_KIND_NACK);
    else if (v == 0x2f)
      assert_int_equal(k, WIRE_KIND_ROUTED);
    else if (v == 0x30)
      assert_int_equal(k, WIRE_KIND_AGENT_GONE);
    else if (v >= 0x31 && v <= 0x34)
      assert_int_equal(k, WIRE_KIND_SESSION_OPEN + (v - 0x31));
    else if (v == 0x35)
      assert_int_equal(k, WIRE_KIND_PUNCH_BIND);
    else if (v == 0x36)
      assert_int_equal(k, WIRE_KIND_SERVICES);
    else if (v == 0x37)
      assert_int_equal(k, WIRE_KIND_REVOKED);
    else
      assert_int_equal(k, WIRE_KIND_UNKNOWN);
  }
}

/* --- section 6: signaling ----------------------------------------------- */

static const char *const host_cand =
    "00 00 00 00 | 00 00 00 00 c0 a8 01 64 50 c3 | ff ff ff 7e | "
    "12 00 00 00 00 00 00 00 \"host_192.168.1.100\" | 00";
static const char *const srflx_cand =
    "01 00 00 00 | 00 00 00 00 cb 00 71 32 50 c3 | ff ff ff 64 | "
    "12 00 00 00 00 00 00 00 \"srflx_203.0.113.50\" | "
    "01 00 00 00 00 c0 a8 01 64 50 c3";
static const char *const v6_cand =
    "00 00 00 00 | 01 00 00 00 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 "
    "01 52 11 | 01 00 00 00 | 01 00 00 00 00 00 00 00 68 | 00";

static void host_candidate(struct wire_candidate *c)
{
  memset(c, 0, sizeof(*c));
  c->type = WIRE_CAND_HOST;
  set_v4(&c->addr, "192.168.1.100", 50000);
  c->priority = 2130706431u;
  strcpy(c->foundation, "host_192.168.1.100");
}

/* Encodes m as a frame and compares with hex; decodes hex's payload and
 * encodes again; every truncation of the payload must fail cleanly. */
static void roundtrip(const struct wire_sig *m, const char *hex)
{
  uint8_t want[1024], buf[1024], again[1024];
  size_t n = unhex(hex, want, sizeof(want));
  struct wire_sig *back = malloc(sizeof(*back));
  int k;

  assert_non_null(back);
  k = wire_sig_frame(buf, sizeof(buf), m);
  assert_int_equal(k, (int)n);
  assert_memory_equal(buf, want, n);
  assert_int_equal(wire_sig_decode(want + 4, n - 4, back), 0);
  k = wire_sig_frame(again, sizeof(again), back);
  assert_int_equal(k, (int)n);
  assert_memory_equal(again, want, n);
  for (size_t cut = 0; cut < n - 4; cut++)
    assert_true(wire_sig_decode(want + 4, cut, back) < 0);
  /* Trailing bytes after a message are tolerated. */
  want[n] = 0xee;
  assert_int_equal(wire_sig_decode(want + 4, n - 3, back), 0);
  free(back);
}

static struct wire_sig *sig_new(uint32_t tag, uint64_t session)
{
  struct wire_sig *m = calloc(1, sizeof(*m));
  assert_non_null(m);
  m->tag = tag;
  m->session_id = session;
  return m;
}

static void test_wire_sig_golden(void **state)
{
  struct wire_sig *m;
  (void)state;

  m = sig_new(WIRE_SIG_OFFER, 1);
  strcpy(m->service_id, "test");
  m->service_id_len = 4;
  roundtrip(m, "00 00 00 20 00 00 00 00 01 00 00 00 00 00 00 00 04 00 00 00 "
               "00 00 00 00 74 65 73 74 00 00 00 00 00 00 00 00");
  free(m);

  m = sig_new(WIRE_SIG_ANSWER, 1);
  roundtrip(m, "00 00 00 14 01 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00 "
               "00 00 00 00");
  free(m);

  m = sig_new(WIRE_SIG_START, 1);
  m->start_delay_ms = 100;
  roundtrip(m, "00 00 00 1c 02 00 00 00 01 00 00 00 00 00 00 00 64 00 00 00 "
               "00 00 00 00 00 00 00 00 00 00 00 00");
  free(m);

  m = sig_new(WIRE_SIG_RESULT, 1);
  m->success = 1;
  m->has_working = 1;
  set_v4(&m->working, "203.0.113.50", 4434);
  roundtrip(m, "00 00 00 18 03 00 00 00 01 00 00 00 00 00 00 00 01 01 00 00 "
               "00 00 cb 00 71 32 52 11");
  free(m);

  m = sig_new(WIRE_SIG_RESULT, 1);
  roundtrip(m, "00 00 00 0e 03 00 00 00 01 00 00 00 00 00 00 00 00 00");
  free(m);

  m = sig_new(WIRE_SIG_ERROR, 42);
  m->has_session_id = 1;
  m->code = WIRE_SIGERR_NO_CONNECTOR;
  strcpy(m->message, "x");
  m->message_len = 1;
  roundtrip(m, "00 00 00 1a 04 00 00 00 01 2a 00 00 00 00 00 00 00 02 00 00 "
               "00 01 00 00 00 00 00 00 00 78");
  free(m);

  m = sig_new(WIRE_SIG_ERROR, 0);
  roundtrip(m, "00 00 00 11 04 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 "
               "00");
  free(m);
}

static void test_wire_sig_candidates(void **state)
{
  struct wire_sig *m = sig_new(WIRE_SIG_ANSWER, 7);
  char hex[2048];
  (void)state;

  /* Each candidate on its own, inside an Answer: length 4+8+8+candidate. */
  host_candidate(&m->cand[0]);
  m->ncand = 1;
  snprintf(hex, sizeof(hex), "00 00 00 41 01 00 00 00 07 00 00 00 00 00 00 00"
           " 01 00 00 00 00 00 00 00 %s", host_cand);
  roundtrip(m, hex);

  memset(&m->cand[0], 0, sizeof(m->cand[0]));
  m->cand[0].type = WIRE_CAND_SRFLX;
  set_v4(&m->cand[0].addr, "203.0.113.50", 50000);
  m->cand[0].priority = 1694498815u;
  strcpy(m->cand[0].foundation, "srflx_203.0.113.50");
  m->cand[0].has_related = 1;
  set_v4(&m->cand[0].related, "192.168.1.100", 50000);
  snprintf(hex, sizeof(hex), "00 00 00 4b 01 00 00 00 07 00 00 00 00 00 00 00"
           " 01 00 00 00 00 00 00 00 %s", srflx_cand);
  roundtrip(m, hex);

  memset(&m->cand[0], 0, sizeof(m->cand[0]));
  set_v6(&m->cand[0].addr, "2001:db8::1", 4434);
  m->cand[0].priority = 1;
  strcpy(m->cand[0].foundation, "h");
  snprintf(hex, sizeof(hex), "00 00 00 3c 01 00 00 00 07 00 00 00 00 00 00 00"
           " 01 00 00 00 00 00 00 00 %s", v6_cand);
  roundtrip(m, hex);
  free(m);

  /* The Offer of protocol.md 6 with the host candidate. */
  m = sig_new(WIRE_SIG_OFFER, 0x0102030405060708ull);
  strcpy(m->service_id, ID);
  m->service_id_len = 12;
  host_candidate(&m->cand[0]);
  m->ncand = 1;
  snprintf(hex, sizeof(hex), "00 00 00 55 | 00 00 00 00 | 08 07 06 05 04 03 "
           "02 01 | 0c 00 00 00 00 00 00 00 \"echo-service\" | 01 00 00 00 00 "
           "00 00 00 | %s", host_cand);
  roundtrip(m, hex);
  free(m);
}

static void test_wire_sig_malformed(void **state)
{
  struct wire_sig *m = malloc(sizeof(*m));
  uint8_t in[512];
  size_t n;
  (void)state;

  /* Unknown tag. */
  n = unhex("05 00 00 00 01 00 00 00 00 00 00 00", in, sizeof(in));
  assert_int_equal(wire_sig_decode(in, n, m), ZTNA_ERR_MALFORMED);
  /* Bool 02 in PunchingResult.success. */
  n = unhex("03 00 00 00 01 00 00 00 00 00 00 00 02 00", in, sizeof(in));
  assert_int_equal(wire_sig_decode(in, n, m), ZTNA_ERR_MALFORMED);
  /* Option tag 02. */
  n = unhex("03 00 00 00 01 00 00 00 00 00 00 00 01 02", in, sizeof(in));
  assert_int_equal(wire_sig_decode(in, n, m), ZTNA_ERR_MALFORMED);
  /* SocketAddr tag 2. */
  n = unhex("03 00 00 00 01 00 00 00 00 00 00 00 01 01 02 00 00 00 01 02 03 "
            "04 05 06", in, sizeof(in));
  assert_int_equal(wire_sig_decode(in, n, m), ZTNA_ERR_MALFORMED);
  /* String length far past the input (u64 near 2^64). */
  n = unhex("00 00 00 00 01 00 00 00 00 00 00 00 ff ff ff ff ff ff ff ff 41",
            in, sizeof(in));
  assert_int_equal(wire_sig_decode(in, n, m), ZTNA_ERR_SHORT);
  /* Invalid UTF-8 in service_id. */
  n = unhex("00 00 00 00 01 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 c3 "
            "28 00 00 00 00 00 00 00 00", in, sizeof(in));
  assert_int_equal(wire_sig_decode(in, n, m), ZTNA_ERR_UTF8);
  /* Service id longer than 255 bytes. */
  memset(in, 0, sizeof(in));
  n = unhex("00 00 00 00 01 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00", in,
            sizeof(in));
  memset(in + n, 'a', 256);
  n += 256 + 8;
  assert_int_equal(wire_sig_decode(in, n, m), ZTNA_ERR_TOO_LARGE);
  /* A billion candidates: refused before any is read. */
  n = unhex("01 00 00 00 01 00 00 00 00 00 00 00 00 ca 9a 3b 00 00 00 00", in,
            sizeof(in));
  assert_int_equal(wire_sig_decode(in, n, m), ZTNA_ERR_LIMIT);
  /* Candidate type 4. */
  n = unhex("01 00 00 00 01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 04 "
            "00 00 00", in, sizeof(in));
  assert_int_equal(wire_sig_decode(in, n, m), ZTNA_ERR_MALFORMED);
  /* An over-long Error message is cut, on a character boundary. */
  n = unhex("04 00 00 00 00 00 00 00 00 2c 01 00 00 00 00 00 00", in,
            sizeof(in));
  for (size_t i = 0; i < 300; i += 2) {
    in[n + i] = 0xc3;
    in[n + i + 1] = 0xa9;
  }
  assert_int_equal(wire_sig_decode(in, n + 300, m), 0);
  assert_true(m->message_len <= WIRE_MESSAGE_MAX);
  assert_int_equal(m->message_len % 2, 0);
  free(m);
}

struct collect {
  int count;
  uint64_t ids[16];
};

static void collect_cb(const struct wire_sig *m, void *ud)
{
  struct collect *c = ud;
  if (c->count < 16)
    c->ids[c->count] = m->session_id;
  c->count++;
}

static void test_wire_sigbuf(void **state)
{
  struct wire_sigbuf sb;
  struct collect col = { 0 };
  uint8_t stream[4096], big[8];
  size_t n = 0;
  struct wire_sig *m = sig_new(WIRE_SIG_START, 0);
  (void)state;

  for (int i = 1; i <= 5; i++) {
    m->session_id = (uint64_t)i;
    host_candidate(&m->cand[0]);
    m->ncand = (size_t)(i % 2);
    n += (size_t)wire_sig_frame(stream + n, sizeof(stream) - n, m);
  }
  free(m);
  /* Byte by byte; an idle buffer holds no memory. */
  assert_int_equal(wire_sigbuf_init(&sb), 0);
  assert_null(sb.buf);
  assert_int_equal(sb.cap, 0);
  for (size_t i = 0; i < n; i++)
    assert_int_equal(wire_sigbuf_feed(&sb, stream + i, 1, collect_cb, &col),
                     0);
  assert_int_equal(col.count, 5);
  for (int i = 0; i < 5; i++)
    assert_int_equal(col.ids[i], (uint64_t)i + 1);
  /* All at once. */
  col.count = 0;
  assert_int_equal(wire_sigbuf_feed(&sb, stream, n, collect_cb, &col), 0);
  assert_int_equal(col.count, 5);
  /* A frame over 65536 closes the buffer for good. */
  unhex("00 01 00 01 00 00 00 00", big, sizeof(big));
  assert_int_equal(wire_sigbuf_feed(&sb, big, sizeof(big), collect_cb, &col),
                   ZTNA_ERR_TOO_LARGE);
  assert_int_equal(wire_sigbuf_feed(&sb, stream, n, collect_cb, &col),
                   ZTNA_ERR_STATE);
  wire_sigbuf_free(&sb);

  /* A payload that does not decode closes it too. */
  assert_int_equal(wire_sigbuf_init(&sb), 0);
  unhex("00 00 00 04 09 00 00 00", big, sizeof(big));
  assert_int_equal(wire_sigbuf_feed(&sb, big, 8, collect_cb, &col),
                   ZTNA_ERR_MALFORMED);
  assert_int_equal(wire_sigbuf_feed(&sb, stream, n, collect_cb, &col),
                   ZTNA_ERR_STATE);
  wire_sigbuf_free(&sb);

  /* The buffer grows to what the frame being assembled needs, up to the
   * largest frame, in pieces, and is given back once empty. */
  {
    static uint8_t junk[4 + WIRE_SIG_PAYLOAD_MAX];
    size_t half = sizeof(junk) / 2;
    assert_int_equal(wire_sigbuf_init(&sb), 0);
    memset(junk, 0xee, sizeof(junk));
    junk[0] = 0x00, junk[1] = 0x01, junk[2] = 0x00, junk[3] = 0x00;
    assert_int_equal(wire_sigbuf_feed(&sb, junk, half, collect_cb, &col), 0);
    assert_true(sb.cap >= half && sb.cap <= sizeof(junk));
    assert_int_equal(wire_sigbuf_feed(&sb, junk + half, sizeof(junk) - half,
                                      collect_cb, &col),
                     ZTNA_ERR_MALFORMED);
    assert_null(sb.buf);
    assert_int_equal(sb.cap, 0);
    wire_sigbuf_free(&sb);
  }
}

/* --- section 5: control packets ----------------------------------------- */

static void test_wire_ctl_golden(void **state)
{
  struct wire_ctl c = { 0 }, back;
  uint8_t buf[64];
  int n;
  (void)state;

  c.kind = WIRE_CTL_BIND_REQ;
  memset(c.txn, 0xaa, 12);
  c.priority = 0x0102030405060708ull;
  n = wire_ctl_encode(buf, sizeof(buf), &c);
  assert_bytes(buf, n, "5a 00 00 00 00 aa aa aa aa aa aa aa aa aa aa aa aa 08"
                       " 07 06 05 04 03 02 01 00");
  assert_int_equal(wire_ctl_decode(buf, (size_t)n, &back), 0);
  assert_int_equal(back.kind, WIRE_CTL_BIND_REQ);
  assert_true(back.priority == c.priority);
  assert_int_equal(back.use_candidate, 0);
  buf[25] = 2; /* bad bool */
  assert_int_equal(wire_ctl_decode(buf, (size_t)n, &back),
                   ZTNA_ERR_MALFORMED);

  memset(&c, 0, sizeof(c));
  c.kind = WIRE_CTL_BIND_RESP;
  memset(c.txn, 0xaa, 12);
  c.success = 1;
  c.has_mapped = 1;
  set_v4(&c.mapped, "198.51.100.7", 61000);
  n = wire_ctl_encode(buf, sizeof(buf), &c);
  assert_bytes(buf, n, "5a 01 00 00 00 aa aa aa aa aa aa aa aa aa aa aa aa 01"
                       " 01 00 00 00 00 c6 33 64 07 48 ee");
  assert_int_equal(wire_ctl_decode(buf, (size_t)n, &back), 0);
  assert_int_equal(back.kind, WIRE_CTL_BIND_RESP);
  assert_int_equal(((struct sockaddr_in *)&back.mapped)->sin_port,
                   htons(61000));
  c.has_mapped = 0;
  assert_int_equal(wire_ctl_encode(buf, sizeof(buf), &c), 19);
  set_v6(&c.mapped, "2001:db8::7", 1);
  c.has_mapped = 1;
  n = wire_ctl_encode(buf, sizeof(buf), &c);
  assert_int_equal(n, 41);
  assert_int_equal(wire_ctl_decode(buf, (size_t)n, &back), 0);
  /* A v4 tag in a 41-byte packet does not fit exactly. */
  buf[19] = 0;
  assert_int_equal(wire_ctl_decode(buf, (size_t)n, &back),
                   ZTNA_ERR_MALFORMED);

  memset(&c, 0, sizeof(c));
  c.kind = WIRE_CTL_KA_REQ;
  c.seq = 1;
  assert_bytes(buf, wire_ctl_encode(buf, sizeof(buf), &c),
               "5a 10 00 00 00 01");
  c.kind = WIRE_CTL_KA_RESP;
  n = wire_ctl_encode(buf, sizeof(buf), &c);
  assert_bytes(buf, n, "5a 11 00 00 00 01");
  assert_int_equal(wire_ctl_decode(buf, 6, &back), 0);
  assert_int_equal(back.kind, WIRE_CTL_KA_RESP);
  assert_int_equal(back.seq, 1);

  /* Only the exact sizes are control packets. */
  for (size_t len = 0; len < 64; len++) {
    memset(buf, 0, sizeof(buf));
    buf[0] = 0x5a;
    buf[1] = 0x10;
    if (wire_ctl_decode(buf, len, &back) == 0)
      assert_true(len == 6 || len == 26);
  }
}

/* The authenticated checks (protocol.md 10): the same fields as 00/01
 * under type 02/03, the session and connection ID in a request, a tag
 * last; and the punch binding inside an end-to-end connection. */
static void test_wire_ctl_authenticated(void **state)
{
  struct wire_ctl c = { 0 }, back;
  uint8_t buf[128];
  uint64_t sid;
  int n;
  (void)state;

  c.kind = WIRE_CTL_BIND_REQ;
  c.auth = 1;
  memset(c.txn, 0xaa, 12);
  c.priority = 0x0102030405060708ull;
  c.session = 0x1122334455667788ull;
  c.cidlen = 4;
  memset(c.cid, 0xcc, 4);
  memset(c.tag, 0xee, 16);
  n = wire_ctl_encode(buf, sizeof(buf), &c);
  assert_bytes(buf, n,
               "5a 02 00 00 00 aa aa aa aa aa aa aa aa aa aa aa aa"
               " 08 07 06 05 04 03 02 01 00"
               " 88 77 66 55 44 33 22 11 04"
               " cc cc cc cc 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"
               " ee ee ee ee ee ee ee ee ee ee ee ee ee ee ee ee");
  assert_int_equal(n, WIRE_ABIND_REQ_LEN);
  assert_int_equal(wire_ctl_decode(buf, (size_t)n, &back), 0);
  assert_int_equal(back.kind, WIRE_CTL_BIND_REQ);
  assert_true(back.auth && back.session == c.session && back.cidlen == 4);
  assert_memory_equal(back.cid, c.cid, 4);
  assert_memory_equal(back.tag, c.tag, 16);
  assert_ptr_equal(back.raw, buf);
  assert_int_equal(back.rawlen, (size_t)n);
  buf[40] = 1; /* padding after the connection ID */
  assert_int_equal(wire_ctl_decode(buf, (size_t)n, &back),
                   ZTNA_ERR_MALFORMED);
  buf[40] = 0;
  buf[34] = 21; /* a connection ID longer than 20 */
  assert_int_equal(wire_ctl_decode(buf, (size_t)n, &back),
                   ZTNA_ERR_MALFORMED);
  assert_int_equal(wire_ctl_decode(buf, (size_t)n - 1, &back),
                   ZTNA_ERR_MALFORMED);

  memset(&c, 0, sizeof(c));
  c.kind = WIRE_CTL_BIND_RESP;
  c.auth = 1;
  memset(c.txn, 0xaa, 12);
  c.success = 1;
  c.has_mapped = 1;
  set_v4(&c.mapped, "198.51.100.7", 61000);
  memset(c.tag, 0xee, 16);
  n = wire_ctl_encode(buf, sizeof(buf), &c);
  assert_bytes(buf, n, "5a 03 00 00 00 aa aa aa aa aa aa aa aa aa aa aa aa 01"
                       " 01 00 00 00 00 c6 33 64 07 48 ee"
                       " ee ee ee ee ee ee ee ee ee ee ee ee ee ee ee ee");
  assert_int_equal(wire_ctl_decode(buf, (size_t)n, &back), 0);
  assert_true(back.kind == WIRE_CTL_BIND_RESP && back.auth && back.success);
  c.has_mapped = 0;
  assert_int_equal(wire_ctl_encode(buf, sizeof(buf), &c), 35);
  assert_int_equal(wire_ctl_decode(buf, 35, &back), 0);
  set_v6(&c.mapped, "2001:db8::7", 1);
  c.has_mapped = 1;
  assert_int_equal(wire_ctl_encode(buf, sizeof(buf), &c), 57);
  assert_int_equal(wire_ctl_decode(buf, 57, &back), 0);
  /* An untagged answer is never read as a tagged one, nor the reverse. */
  buf[1] = 1;
  assert_int_equal(wire_ctl_decode(buf, 57, &back), ZTNA_ERR_MALFORMED);
  assert_int_equal(wire_ctl_decode(buf, 41, &back), 0);
  assert_false(back.auth);

  n = wire_punch_bind_encode(buf, sizeof(buf), 0x0102030405060708ull);
  assert_bytes(buf, n, "35 01 02 03 04 05 06 07 08");
  assert_int_equal(wire_classify(buf, (size_t)n), WIRE_KIND_PUNCH_BIND);
  assert_int_equal(wire_punch_bind_decode(buf, (size_t)n, &sid), 0);
  assert_true(sid == 0x0102030405060708ull);
  assert_int_equal(wire_punch_bind_decode(buf, (size_t)n - 1, &sid),
                   ZTNA_ERR_MALFORMED);
  assert_int_equal(wire_punch_bind_encode(buf, 8, 1), ZTNA_ERR_TOO_LARGE);
}

/* The services an end-to-end connection may carry (protocol.md 10). */
static void test_wire_services(void **state)
{
  struct wire_id ids[2] = { { (const uint8_t *)"web", 3 },
                            { (const uint8_t *)"db", 2 } }, back[4];
  uint8_t buf[64];
  int n;
  (void)state;

  n = wire_services_encode(buf, sizeof(buf), ids, 2);
  assert_bytes(buf, n, "36 02 03 77 65 62 02 64 62");
  assert_int_equal(wire_services_decode(buf, (size_t)n, back, 4), 2);
  assert_int_equal(back[1].n, 2);
  assert_memory_equal(back[1].p, "db", 2);
  assert_int_equal(wire_services_decode(buf, (size_t)n, back, 1),
                   ZTNA_ERR_MALFORMED); /* more than room */
  assert_int_equal(wire_services_decode(buf, (size_t)n - 1, back, 4),
                   ZTNA_ERR_MALFORMED);
  buf[n] = 0;
  assert_int_equal(wire_services_decode(buf, (size_t)n + 1, back, 4),
                   ZTNA_ERR_MALFORMED); /* trailing bytes */
  buf[6] = 0;
  assert_int_equal(wire_services_decode(buf, 7, back, 4),
                   ZTNA_ERR_MALFORMED); /* an empty id */
  buf[3] = 0xff;
  buf[6] = 2;
  assert_int_equal(wire_services_decode(buf, (size_t)n, back, 4),
                   ZTNA_ERR_MALFORMED); /* not UTF-8 */
  assert_int_equal(wire_services_encode(buf, 5, ids, 2), ZTNA_ERR_TOO_LARGE);
  n = wire_services_encode(buf, sizeof(buf), ids, 0);
  assert_bytes(buf, n, "36 00");
  assert_int_equal(wire_services_decode(buf, 2, back, 4), 0);
  {
    /* Revoked agent: 37 | certificate SHA-256. */
    uint8_t fp[32];
    const uint8_t *got;
    memset(fp, 0xab, sizeof(fp));
    n = wire_revoked_encode(buf, sizeof(buf), fp);
    assert_int_equal(n, WIRE_REVOKED_LEN);
    assert_int_equal(buf[0], 0x37);
    assert_int_equal(wire_revoked_decode(buf, (size_t)n, &got), 0);
    assert_memory_equal(got, fp, 32);
    assert_int_equal(wire_revoked_decode(buf, (size_t)n - 1, &got),
                     ZTNA_ERR_MALFORMED);
    assert_int_equal(wire_revoked_encode(buf, 32, fp), ZTNA_ERR_TOO_LARGE);
  }
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_wire_qad_v4),
    cmocka_unit_test(test_wire_qad_v6),
    cmocka_unit_test(test_wire_register),
    cmocka_unit_test(test_wire_status),
    cmocka_unit_test(test_wire_routed),
    cmocka_unit_test(test_wire_agent_gone),
    cmocka_unit_test(test_wire_relay_sessions),
    cmocka_unit_test(test_wire_classify),
    cmocka_unit_test(test_wire_sig_golden),
    cmocka_unit_test(test_wire_sig_candidates),
    cmocka_unit_test(test_wire_sig_malformed),
    cmocka_unit_test(test_wire_sigbuf),
    cmocka_unit_test(test_wire_ctl_golden),
    cmocka_unit_test(test_wire_ctl_authenticated),
    cmocka_unit_test(test_wire_services),
  };
  return cmocka_run_group_tests_name("wire", tests, NULL, NULL);
}

/* path.c - the end-to-end connection's path decisions, sans-IO. */
#include <string.h>

#include "path.h"

const char *path_state_name(enum path_state s)
{
  static const char *const names[PATH_STATE_COUNT] = {
    "none", "relay", "punching", "validating", "direct",
  };
  return s < PATH_STATE_COUNT ? names[s] : "unknown";
}

const char *path_fail_name(enum path_fail f)
{
  static const char *const names[PATH_FAIL_COUNT] = {
    "timeout", "no_candidates", "peer_error", "validation",
  };
  return f < PATH_FAIL_COUNT ? names[f] : "unknown";
}

static void enter(struct path *p, enum path_state s, uint64_t now)
{
  p->state = s;
  p->since_ms = now;
}

void path_init(struct path *p, int no_direct)
{
  memset(p, 0, sizeof(*p));
  p->no_direct = no_direct;
}

void path_connected(struct path *p, uint64_t now)
{
  enter(p, PATH_RELAY, now);
  p->retry_at_ms = p->no_direct ? 0 : now;
}

void path_lost(struct path *p)
{
  p->state = PATH_NONE;
  p->retry_at_ms = 0;
  p->direct_since_ms = 0;
}

void path_network_changed(struct path *p, uint64_t now)
{
  if (p->state != PATH_RELAY || p->no_direct)
    return;
  p->cooldown_ms = 0;
  p->retry_at_ms = now;
}

int path_relay_changed(const struct path *p)
{
  return p->state != PATH_DIRECT && p->state != PATH_NONE;
}

void path_punch_started(struct path *p, uint64_t now)
{
  if (p->state == PATH_RELAY)
    enter(p, PATH_PUNCHING, now);
  p->retry_at_ms = 0;
}

void path_punch_found(struct path *p, uint64_t now)
{
  p->punches_ok++;
  if (p->state == PATH_PUNCHING)
    enter(p, PATH_VALIDATING, now);
}

/* Back to the relay; the next punch after the cooldown, which doubles up
 * to its cap and starts over after a direct path that held. */
static void back_off(struct path *p, uint64_t now)
{
  if (!p->cooldown_ms ||
      (p->direct_since_ms && now - p->direct_since_ms >= PATH_STABLE_MS))
    p->cooldown_ms = PATH_COOLDOWN_MS;
  enter(p, PATH_RELAY, now);
  p->retry_at_ms = p->no_direct ? 0 : now + p->cooldown_ms;
  p->cooldown_ms *= 2;
  if (p->cooldown_ms > PATH_COOLDOWN_MAX_MS)
    p->cooldown_ms = PATH_COOLDOWN_MAX_MS;
  p->direct_since_ms = 0;
}

void path_failed(struct path *p, enum path_fail why, uint64_t now)
{
  if (p->state != PATH_PUNCHING && p->state != PATH_VALIDATING)
    return;
  if (p->state == PATH_PUNCHING)
    p->punches_failed++;
  p->fails[why]++;
  p->last_fail = why;
  back_off(p, now);
}

void path_validated(struct path *p, uint64_t now)
{
  if (p->state != PATH_VALIDATING)
    return;
  enter(p, PATH_DIRECT, now);
  p->direct_since_ms = now;
}

enum path_action path_tick(struct path *p, uint64_t now, uint64_t silence_ms,
                           int can_punch)
{
  switch (p->state) {
  case PATH_RELAY:
    if (p->retry_at_ms && now >= p->retry_at_ms && can_punch)
      return PATH_ACT_PUNCH;
    return PATH_ACT_NONE;
  case PATH_VALIDATING:
    if (now - p->since_ms >= PATH_VALIDATE_MS) {
      path_failed(p, PATH_FAIL_VALIDATION, now);
      return PATH_ACT_FALLBACK;
    }
    return PATH_ACT_NONE;
  case PATH_DIRECT:
    if (silence_ms >= PATH_SILENCE_MS) {
      p->fallbacks++;
      back_off(p, now);
      return PATH_ACT_FALLBACK;
    }
    return PATH_ACT_NONE;
  default:
    return PATH_ACT_NONE;
  }
}

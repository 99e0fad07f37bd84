/* The page's state, shared by the modules, and the questions asked of it everywhere. */

export const state = {
  me: null,
  models: [],
  topics: [],
  threads: new Map(), // id → thread
  threadOrder: [],
  threadCursor: null,
  topicFilter: "",
  current: null, // the open thread
  messages: new Map(), // id → message, for the open thread
  hasOlder: false,
  oldestSeq: null,
  lastSeq: 0, // the newest event seq applied for the open thread
  steps: new Map(), // messageId → last agent step
  artifacts: new Map(), // messageId → [artifact]
  files: new Map(), // fileId → metadata (or a promise of it)
  pending: [], // files being attached: {key, file, progress, id, error}
  loadingOlder: false,
};

export function usernameOf(userId) {
  if (!userId) return "AI";
  const member = state.current && state.current.members.find((m) => m.userId === userId);
  return member ? member.username : "former member";
}

export function myMembership(thread) {
  return thread.members.find((m) => m.userId === state.me.id);
}

export function isUnread(thread) {
  const mine = myMembership(thread);
  return !!mine && thread.lastMessageSeq > (mine.lastReadSeq || 0);
}

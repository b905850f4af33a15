"""The decoded head's skin moved onto the drawn face (cpmae.conform), on synthetic volumes."""
import numpy as np

from cpmae.conform import RAMP_VOXELS, TISSUE, conform_to_face

SHAPE = (40, 48, 40)  # z, y, x; the face looks towards low y


def _head():
    """A box head whose skin is at y = 16, a brain behind y = 26, and a dark pocket under the skin."""
    head = np.zeros(SHAPE, np.float32)
    head[4:36, 16:44, 4:36] = 1.0
    head[22:26, 19:21, 12:20] = 0.02  # dark under the skin: an open pocket once the skin is carved back
    brain = np.zeros(SHAPE, bool)
    brain[8:30, 26:40, 10:30] = True
    return head, brain


def _skin(volume):
    """[z, x] first y of tissue per column (-1 where none)."""
    t = volume > TISSUE
    return np.where(t.any(axis=1), t.argmax(axis=1), -1)


def test_the_new_skin_is_the_drawn_surface_and_fades_into_the_decoded_head():
    head, brain = _head()
    front = np.full((SHAPE[0], SHAPE[2]), np.inf)
    front[10:26, 10:26] = 12.0  # a face 4 voxels in front of the decoded skin ...
    front[16:20, 16:20] = 8.0  # ... with a nose 4 more
    front[22:26, 10:26] = 19.0  # and a chin behind the decoded skin: carved back
    out = conform_to_face(head, front, brain)
    skin = _skin(out)
    assert (skin[10:22, 10:16] == 12).all() and (skin[16:20, 16:20] == 8).all()
    assert (skin[22:26, 12:24] == 19).all()
    assert (out[22:26, :19, 12:24] <= TISSUE).all()  # carved: air in front of the new chin
    # under the new skin there is solid tissue: in the gap to the decoded skin, and where the
    # carved skin would have opened the decoded head's dark pocket
    assert (out[12:20, 13:20, 12:20] > 0.5).all() and (out[22:26, 19:21, 12:20] >= 0.5).all()
    # next to the face the decoded skin follows it part of the way, and not beyond the ramp
    assert 12 < skin[15, 8] < 16 and 12 < skin[27, 15] < 19
    far = int(np.ceil(RAMP_VOXELS)) + 3
    assert (skin[10 + 16 + far:, :] == np.where(head.any(axis=1), 16, -1)[10 + 16 + far:, :]).all()
    # behind the skins, and the brain, nothing changes
    assert np.array_equal(out[:, 26:], head[:, 26:])


def test_no_face_is_added_where_the_model_drew_no_head_or_behind_the_brain_front():
    head, brain = _head()
    head[:, :, :10] = 0.0  # no head in these columns
    front = np.full((SHAPE[0], SHAPE[2]), np.inf)
    front[10:26, 2:30] = 12.0
    out = conform_to_face(head, front, brain)
    assert (out[:, :, :10] == 0).all()
    # a surface that lies nowhere in front of the brain's frontal pole changes nothing
    assert conform_to_face(head, np.full((SHAPE[0], SHAPE[2]), np.inf), brain) is head
    assert conform_to_face(head, np.full((SHAPE[0], SHAPE[2]), 30.0), brain) is head


def test_a_gap_in_front_of_the_decoded_skin_is_the_decoded_layers_stretched_not_one_block():
    """Under a decoded chin the drawn face may lie many voxels in front of the decoded skin; one
    fill value there made a block that deepbet took for brain. The outer layers are stretched."""
    head, brain = _head()
    head[:, 16:18, 4:36] = 1.0  # skin
    head[:, 18:20, 4:36] = 0.05  # a dark layer (bone) under it
    head[:, 20:26, 4:36] = 0.6
    front = np.full((SHAPE[0], SHAPE[2]), np.inf)
    front[10:26, 10:26] = 4.0  # 12 voxels in front of the decoded skin
    out = conform_to_face(head, front, brain)
    assert (_skin(out)[12:24, 12:24] == 4).all()
    column = out[16, :, 16]
    assert column[5] > 0.5  # the new skin is tissue (voxel 4 is half in front of it)
    dark = np.nonzero(column[6:16] < 0.2)[0]
    assert len(dark) >= 2, column  # the dark layer came forward with the skin, stretched
    assert np.array_equal(out[:, 26:], head[:, 26:])
